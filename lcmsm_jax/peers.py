"""Processes of one run waiting for each other before a collective.

The first cross-process collective of a program sets up its communicator, and that set-up
waits only briefly for the other processes: on CPU gloo gives up after 30 s
("Gloo context initialization failed: DEADLINE_EXCEEDED"), and the run is lost. Processes
reach a program's first collective minutes apart whenever one compiles it more slowly (a
slower or busier host, a cold compilation cache, a straggling data loader), so every
process compiles first and then waits here, through JAX's coordination service (the
key-value store every process of a run already talks to), for all the others.

A process that is late by more than `config.mesh.peer_timeout` seconds stops the run with
an error naming it (its process id, host and pid); a wait of more than a minute is reported
while it goes on.
"""

from __future__ import annotations

import itertools
import os
import socket
import time

import jax

from lcmsm_jax.progress import say

_KEY = "lcmsm/peers"
_waits = itertools.count()  # each wait has its own keys; every process waits in the same order
_timeout = {"seconds": 1800.0}  # config.mesh.peer_timeout of this process's run (`introduce`)
# How often a long wait says what it is waiting for, in seconds.
REPORT_EVERY = 60.0


class PeerTimeout(RuntimeError):
    """Another process of the run did not arrive within config.mesh.peer_timeout."""


def _client():
    # JAX's handle on the coordination service; set by jax.distributed.initialize.
    from jax._src import distributed

    return distributed.global_state.client


def introduce(timeout: float) -> None:
    """Record this process's host and pid, for the messages about a late process, and the
    run's config.mesh.peer_timeout; called once after `jax.distributed.initialize`."""
    _timeout["seconds"] = float(timeout)
    if jax.process_count() > 1:
        who = f"{socket.gethostname()} pid {os.getpid()}"
        _client().key_value_set(f"{_KEY}/who/{jax.process_index()}", who)


def _describe(process: int) -> str:
    try:
        who = _client().key_value_try_get(f"{_KEY}/who/{process}")
    except Exception:  # not introduced yet: the id alone
        return f"process {process}"
    return f"process {process} ({who})"


def _describe_all(processes: list[int]) -> str:
    return ", ".join(_describe(i) for i in processes)


def compile_and_wait(lowered: jax.stages.Lowered, what: str) -> jax.stages.Compiled:
    """Compile `lowered`, then wait for every process to have compiled it too (`what` names
    the program in the messages); call it for a program with cross-process collectives
    before its first run."""
    compiled = lowered.compile()
    wait_for_all(f"compiling {what}")
    return compiled


def wait_for_all(what: str, timeout: float | None = None) -> None:
    """Return once every process of the run has called this for `what` (the same calls in
    the same order on every process); nothing for a single process.

    Args:
      what: what the processes did before waiting ("compiling the training step"); named
        in the messages.
      timeout: seconds to wait for the last process; None: config.mesh.peer_timeout.
    Raises:
      PeerTimeout naming the processes that did not arrive.
    """
    if jax.process_count() == 1:
        return
    timeout = _timeout["seconds"] if timeout is None else timeout
    client = _client()
    prefix = f"{_KEY}/wait{next(_waits)}/"
    client.key_value_set(prefix + str(jax.process_index()), "arrived")
    started = time.monotonic()
    reported = started
    while True:
        arrived = {key.rsplit("/", 1)[-1] for key, _ in client.key_value_dir_get(prefix)}
        missing = [i for i in range(jax.process_count()) if str(i) not in arrived]
        if not missing:
            return
        now = time.monotonic()
        if now - started >= timeout:
            raise PeerTimeout(
                f"waited {now - started:.0f} s for {_describe_all(missing)} to finish {what} "
                f"(config.mesh.peer_timeout = {timeout:g} s); stopping the run"
            )
        if now - reported >= REPORT_EVERY:
            reported = now
            say(f"waiting for {_describe_all(missing)} to finish {what} ({now - started:.0f} s "
                f"so far, config.mesh.peer_timeout = {timeout:g} s)")  # fmt: skip
        until = min(timeout - (now - started), REPORT_EVERY - (now - reported), 5.0)
        remaining = max(1, int(1000 * until))
        try:  # wakes as soon as the first missing process arrives
            client.blocking_key_value_get(prefix + str(missing[0]), remaining)
        except Exception:  # its deadline: look again
            pass
