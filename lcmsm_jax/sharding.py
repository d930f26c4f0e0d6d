"""Process start-up, device mesh and shardings.

Start-up (`initialize_distributed`): one code path for 1 and N processes. Every process runs
the same command; where its identity comes from is `config.mesh.cluster`:
  * "explicit": coordinator, process count and id from `config.mesh.{coordinator,
    num_processes,process_id}` or the environment (`LCMSM_COORDINATOR`,
    `LCMSM_NUM_PROCESSES`, `LCMSM_PROCESS_ID`): local runs (`launch/local.sh`), Kubernetes;
  * "slurm": from `srun`'s variables (SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID, the step's
    node list), one process per GPU or per node (`config.mesh.slurm_process_per`);
  * "tpu": `jax.distributed.initialize()` finds the workers of a Cloud TPU slice itself;
  * "single": no multi-process runtime;
  * "auto" (default): the first of explicit, slurm, tpu whose settings are present, else
    single.
JAX's multi-controller runtime does the rest (on CPU its collectives are gloo's). A process
whose peers do not all join within `config.mesh.init_timeout` seconds stops with an error
naming the coordinator and the processes expected; later, processes wait for each other
after compiling (`lcmsm_jax/peers.py`, `config.mesh.peer_timeout`).

Mesh: 1-D, axis "data". The batch is split over it; under `jax.jit` with these shardings
batch reductions (losses, BatchNorm statistics) are global: XLA inserts the cross-device
collectives, so there is no `pmean` in the step. The state is replicated, or with
`config.mesh.fsdp` each array is split over the same axis along its largest divisible
dimension (big_vision's "fsdp" rule): XLA gathers the parameters where they are used and
reduce-scatters their gradients.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from lcmsm_jax import peers

DATA_AXIS = "data"

CLUSTERS = ("auto", "single", "explicit", "slurm", "tpu")
SLURM_PROCESS_PER = ("auto", "gpu", "node")
ENV_COORDINATOR = "LCMSM_COORDINATOR"
ENV_NUM_PROCESSES = "LCMSM_NUM_PROCESSES"
ENV_PROCESS_ID = "LCMSM_PROCESS_ID"
# What srun sets for every task (JAX's own SLURM detection requires the same).
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")  # fmt: skip


class DistributedStartupError(ConnectionError):
    """The multi-process runtime did not start: a peer is missing, or the settings are wrong.

    A ConnectionError (OSError), so the command line reports it in one line with exit 1.
    """


@dataclasses.dataclass(frozen=True)
class ProcessPlan:
    """How this process joins the run; `num_processes` None = JAX detects it (TPU)."""

    cluster: str  # single | explicit | slurm | tpu
    coordinator: str | None = None  # host:port of process 0's coordination service
    num_processes: int | None = 1
    process_id: int | None = 0
    local_device_ids: tuple[int, ...] | None = None  # None: every device the host has

    @property
    def multi_process(self) -> bool:
        return self.cluster == "tpu" or (self.num_processes or 1) > 1

    def describe(self) -> str:
        if self.cluster == "tpu":
            return "tpu (workers found by jax.distributed)"
        devices = "all local devices" if self.local_device_ids is None else (
            f"local devices {list(self.local_device_ids)}"
        )  # fmt: skip
        return (f"{self.cluster}: process {self.process_id} of {self.num_processes}, "
                f"coordinator {self.coordinator}, {devices}")  # fmt: skip


def _mesh_value(mesh_config, key: str, default):
    return mesh_config.get(key, default) if mesh_config is not None else default


def _int_setting(mesh_config, key: str, env: Mapping[str, str], var: str, unset: int) -> int | None:
    """config.mesh.<key> when set (!= `unset`), else $<var>, else None."""
    value = _mesh_value(mesh_config, key, unset)
    if value != unset:
        return int(value)
    if env.get(var, "") == "":
        return None
    try:
        return int(env[var])
    except ValueError:
        raise DistributedStartupError(f"${var} = {env[var]!r}: expected an integer") from None


def _explicit_plan(mesh_config, env: Mapping[str, str]) -> ProcessPlan | None:
    """From config.mesh.{coordinator,num_processes,process_id} or LCMSM_*; None if unset."""
    coordinator = _mesh_value(mesh_config, "coordinator", "") or env.get(ENV_COORDINATOR, "")
    count = _int_setting(mesh_config, "num_processes", env, ENV_NUM_PROCESSES, 0)
    index = _int_setting(mesh_config, "process_id", env, ENV_PROCESS_ID, -1)
    given = {
        f"config.mesh.coordinator (or ${ENV_COORDINATOR})": coordinator or None,
        f"config.mesh.num_processes (or ${ENV_NUM_PROCESSES})": count,
        f"config.mesh.process_id (or ${ENV_PROCESS_ID})": index,
    }
    if all(v is None for v in given.values()):
        return None
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise DistributedStartupError(
            f"a multi-process run needs all three of coordinator, process count and process "
            f"id; missing: {', '.join(missing)}"
        )
    if ":" not in coordinator:
        raise DistributedStartupError(
            f"config.mesh.coordinator = {coordinator!r}: expected host:port of process 0"
        )
    if count < 1 or not 0 <= index < count:
        raise DistributedStartupError(
            f"process id {index} with {count} processes: expected 0 <= process_id < "
            "num_processes (config.mesh.process_id / config.mesh.num_processes)"
        )
    return ProcessPlan("explicit", coordinator, count, index)


def slurm_first_host(node_list: str) -> str:
    """The first host of a SLURM node list: "gpu[003-005,9],cpu1" -> "gpu003"."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", node_list.strip())
    if not match:
        raise DistributedStartupError(f"$SLURM_STEP_NODELIST = {node_list!r}: no host in it")
    prefix, ranges = match.groups()
    return prefix + (re.split(r"[,-]", ranges)[0] if ranges else "")


def _slurm_tasks_per_node(env: Mapping[str, str]) -> list[int]:
    """Tasks on each node of the step: SLURM_STEP_TASKS_PER_NODE = "2(x3),1" -> [2, 2, 2, 1]."""
    text = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or ""
    counts = []
    for part in filter(None, text.split(",")):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise DistributedStartupError(f"$SLURM_STEP_TASKS_PER_NODE = {text!r}: unreadable")
        counts += [int(match[1])] * int(match[2] or 1)
    return counts


def _slurm_plan(mesh_config, env: Mapping[str, str]) -> ProcessPlan:
    """From srun's variables. One process per GPU (JAX's assumption: the task sees GPU
    SLURM_LOCALID only) or per node (the task sees all its node's GPUs); "auto" picks per
    node when every node of the step runs one task."""
    missing = [var for var in _SLURM_VARS if var not in env]
    if missing:
        raise DistributedStartupError(
            f"config.mesh.cluster = 'slurm' but {', '.join('$' + v for v in missing)} "
            "unset: start every process with srun"
        )
    per = _mesh_value(mesh_config, "slurm_process_per", "auto")
    if per not in SLURM_PROCESS_PER:
        raise DistributedStartupError(
            f"config.mesh.slurm_process_per = {per!r}: expected one of {SLURM_PROCESS_PER}"
        )
    if per == "auto":
        tasks = _slurm_tasks_per_node(env)
        per = "node" if tasks and max(tasks) == 1 else "gpu"
    # Same port rule as JAX's own SLURM detection, so both agree when mixed.
    port = env.get("JAX_COORDINATOR_PORT") or str(int(env["SLURM_JOB_ID"]) % 4096 + 61440)
    return ProcessPlan(
        "slurm",
        f"{slurm_first_host(env['SLURM_STEP_NODELIST'])}:{port}",
        int(env["SLURM_NTASKS"]),
        int(env["SLURM_PROCID"]),
        None if per == "node" else (int(env["SLURM_LOCALID"]),),
    )


def _on_tpu_vm(env: Mapping[str, str]) -> bool:
    """A Cloud TPU VM (TPU chips appear as /dev/accel* or /dev/vfio/<n>), unless
    JAX_PLATFORMS rules TPUs out (tests on a TPU VM run on its CPU)."""
    platforms = env.get("JAX_PLATFORMS", "")
    if platforms and "tpu" not in platforms.split(","):
        return False
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def plan_processes(mesh_config=None, env: Mapping[str, str] | None = None) -> ProcessPlan:
    """This process's place in the run, from config.mesh and the environment (no side
    effects: tests fake `env`). Raises DistributedStartupError naming the setting."""
    env = os.environ if env is None else env
    cluster = _mesh_value(mesh_config, "cluster", "auto")
    if cluster not in CLUSTERS:
        raise DistributedStartupError(
            f"config.mesh.cluster = {cluster!r}: expected one of {CLUSTERS}"
        )
    if cluster == "single":
        return ProcessPlan("single")
    explicit = _explicit_plan(mesh_config, env)
    if cluster == "explicit" and explicit is None:
        raise DistributedStartupError(
            "config.mesh.cluster = 'explicit': set config.mesh.coordinator, num_processes and "
            f"process_id (or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID})"
        )
    if explicit is not None:
        return explicit
    if cluster == "slurm" or (cluster == "auto" and all(v in env for v in _SLURM_VARS)):
        return _slurm_plan(mesh_config, env)
    if cluster == "tpu" or (cluster == "auto" and _on_tpu_vm(env)):
        return ProcessPlan("tpu", num_processes=None, process_id=None)
    return ProcessPlan("single")


def initialize_distributed(mesh_config: ml_collections.ConfigDict | None = None) -> ProcessPlan:
    """Join the run as `plan_processes` says (nothing for a single process); idempotent.

    Must come before anything touches a device. Waits at most config.mesh.init_timeout
    seconds (default 60) for every process to join, then raises DistributedStartupError.
    """
    plan = plan_processes(mesh_config)
    if not plan.multi_process or jax.distributed.is_initialized():
        return plan
    timeout = int(_mesh_value(mesh_config, "init_timeout", 60))
    if timeout < 1:
        raise DistributedStartupError(
            f"config.mesh.init_timeout = {timeout}: expected seconds >= 1"
        )
    peer_timeout = float(_mesh_value(mesh_config, "peer_timeout", 1800))
    if not peer_timeout >= 1:
        raise DistributedStartupError(
            f"config.mesh.peer_timeout = {peer_timeout:g}: expected seconds >= 1"
        )
    if jax.config.jax_cpu_collectives_implementation is None:
        # Without cross-process collectives a CPU run would fail at its first all-reduce.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    failed = (
        f"{plan.describe()}: the other processes did not all join within {timeout} s "
        "(config.mesh.init_timeout). Start every process with the same coordinator and "
        "process count, each with its own process id"
    )
    if plan.cluster == "tpu":
        join = functools.partial(jax.distributed.initialize)
    else:
        join = functools.partial(
            jax.distributed.initialize,
            plan.coordinator,
            plan.num_processes,
            plan.process_id,
            local_device_ids=None if plan.local_device_ids is None else list(
                plan.local_device_ids
            ),
            # The plan is complete: stop JAX re-detecting SLURM (it would pin one GPU).
            cluster_detection_method="deactivate",
        )  # fmt: skip
    try:
        # JAX's own deadline is longer: when it expires, its runtime aborts the process with
        # a terse RPC error, so the watchdog speaks first.
        _within(timeout, failed, functools.partial(join, initialization_timeout=2 * timeout + 30))
    except Exception as err:  # JAX raises its runtime's own error types
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise DistributedStartupError(f"{failed} ({reason})") from err
    peers.introduce(peer_timeout)
    return plan


# Exit status of a process whose peers did not join (the command line's failure status).
STARTUP_TIMEOUT_EXIT = 1


def _within(seconds: float, message: str, join: Callable[[], object]) -> None:
    """Run `join()`; if it has not returned after `seconds`, print `message` and end the
    process (exit STARTUP_TIMEOUT_EXIT): a thread blocked in the runtime cannot be
    interrupted, and a missing peer must not hang a job until its wall-clock limit."""
    done = threading.Event()

    def expire() -> None:
        if not done.wait(seconds):
            prog = os.path.basename(sys.argv[0]) or "lcmsm"
            print(f"{prog}: {message}", flush=True)
            os._exit(STARTUP_TIMEOUT_EXIT)

    threading.Thread(target=expire, name="lcmsm-startup-watchdog", daemon=True).start()
    try:
        join()
    finally:
        done.set()


# ----------------------------------------------------------------------------- mesh


def make_mesh(data: int = -1) -> jax.sharding.Mesh:
    """1-D mesh with axis "data" over the first `data` devices (-1 = all; config.mesh.data)."""
    count = jax.device_count()
    n = count if data == -1 else int(data)
    if not 1 <= n <= count:
        raise ValueError(f"config.mesh.data = {data}: this job has {count} devices")
    if jax.process_count() > 1 and n != count:
        raise ValueError(
            f"config.mesh.data = {data}: a multi-process job must use all {count} devices "
            "(pass --config.mesh.data=-1)"
        )
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over "data", the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def fsdp_spec(shape: tuple[int, ...], size: int, *, first_axis: int = 0) -> PartitionSpec:
    """The largest dimension of `shape` (from `first_axis` on) divisible by `size` split over
    "data" (the first of equals); replicated when none is, or for scalars."""
    best = None
    for axis, length in enumerate(shape):
        if axis < first_axis:
            continue
        if length % size == 0 and length >= size and (best is None or length > shape[best]):
            best = axis
    if best is None:
        return PartitionSpec()
    return PartitionSpec(*[DATA_AXIS if axis == best else None for axis in range(len(shape))])


def state_shardings(
    tree, mesh: jax.sharding.Mesh, fsdp: bool, *, stacked: Callable[[tuple], bool] | None = None
):
    """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs): replicated, or
    with `fsdp` split by `fsdp_spec` (parameters, optimiser moments, EMA copy alike).

    Leaves whose path (a tuple of dict keys / indices) `stacked` accepts hold stacked layers
    ([depth, ...], e.g. a MiT stage's blocks) and are never split along the depth: the scan
    over the layers reads one slice per iteration, which must not need a gather.
    """
    size = mesh.shape[DATA_AXIS]
    if not fsdp or size == 1:
        return jax.tree.map(lambda _: replicated(mesh), tree)

    def spec(path, x):
        keys = tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
        first_axis = 1 if stacked is not None and stacked(keys) else 0
        return NamedSharding(mesh, fsdp_spec(np.shape(x), size, first_axis=first_axis))

    return jax.tree_util.tree_map_with_path(spec, tree)


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh, what: str) -> int:
    """The per-process share of a global batch; errors name the config field."""
    devices, processes = mesh.devices.size, jax.process_count()
    if global_batch % devices:
        raise ValueError(
            f"{what} = {global_batch} is not divisible by the {devices} devices of the mesh "
            f"({processes} process(es) x {jax.local_device_count()} local devices); use a "
            f"multiple of {devices}"
        )
    return global_batch // processes
