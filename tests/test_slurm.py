"""`launch/slurm.sbatch` under a real SLURM: slurmctld, slurmd and munge on this machine
(`tools/local_slurm.sh`, which installs Debian's slurm-wlm when it is missing and needs
root). Each job is 2 tasks of one run (gloo between them, 2 CPU devices each).

  * a run stopped by `scancel --signal=TERM` (what `--signal=TERM@N` sends at a time limit:
    every task, not srun) while it compiles, resubmitted and stopped so again mid-run,
    resubmitted and preempted by a job of a higher-priority partition, and submitted once
    more, has every step's losses of one uninterrupted process on 4 devices; each stop
    leaves a checkpoint at the step reached and exit 0;
  * a notice that reaches only the batch shell (`scancel --batch`) is passed on too;
  * a task that fails stops the other and the job reports the failing task.

Skipped, with the reason, where no cluster can be brought up (not root, no package
registry); `.ci/run` sets LCMSM_REQUIRE_SLURM=1 so that CI fails instead.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lcmsm_jax import train

sys.path.insert(0, str(Path(__file__).parent))
from test_launch import CONFIG, LAUNCH, ROOT, RUN, child_env, train_command  # noqa: E402

pytestmark = pytest.mark.slow

STEPS = 24
# Long enough to be stopped mid-run: each task sleeps this long before each batch.
SLOW_STEP = "train._next_batch = (lambda read: lambda *a, **k: (time.sleep(0.4), read(*a, **k))[1])(train._next_batch)"  # noqa: E501
ARGS = [*RUN, f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=1000",
        "--config.data.eval.max_images=2"]  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> None:
    """A one-node cluster with partitions debug (default) and urgent (preempts debug)."""
    done = subprocess.run(
        [str(ROOT / "tools" / "local_slurm.sh")], capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        reason = f"no SLURM cluster on this machine: {(done.stdout + done.stderr).strip()}"
        if os.environ.get("LCMSM_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def submit(tmp_path: Path, name: str, argv: list, command: Path, *sbatch: str) -> str:
    """Submit launch/slurm.sbatch as a 2-task job on this node; returns the job id."""
    env = child_env(XLA_FLAGS="--xla_force_host_platform_device_count=2",
                    LCMSM_COMMAND=str(command))  # fmt: skip
    done = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0",
         "--cpus-per-task=1", f"--job-name={name}", f"--output={tmp_path / name}-%j.out",
         *sbatch, str(LAUNCH / "slurm.sbatch"), *argv],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def job_state(job: str) -> dict:
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True,
                           text=True, timeout=30).stdout  # fmt: skip
    return dict(re.findall(r"(\w+)=(\S*)", shown))


def output(tmp_path: Path, name: str, job: str) -> str:
    path = tmp_path / f"{name}-{job}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for_line(tmp_path: Path, name: str, job: str, pattern: str, timeout=600) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, output(tmp_path, name, job), re.M):
        state = job_state(job).get("JobState")
        assert state in ("PENDING", "CONFIGURING", "RUNNING"), (
            f"job {job} is {state} before {pattern!r}:\n{output(tmp_path, name, job)[-4000:]}"
        )
        assert time.monotonic() < deadline, output(tmp_path, name, job)[-4000:]
        time.sleep(0.5)


def finish(tmp_path: Path, name: str, job: str, timeout=900) -> tuple[str, str]:
    """Wait for the job to end: (its state and exit code, its output)."""
    deadline = time.monotonic() + timeout
    while (state := job_state(job)).get("JobState") in ("PENDING", "CONFIGURING", "RUNNING",
                                                        "COMPLETING"):  # fmt: skip
        assert time.monotonic() < deadline, output(tmp_path, name, job)[-4000:]
        time.sleep(1)
    return f"{state.get('JobState')} {state.get('ExitCode')}", output(tmp_path, name, job)


def losses(workdir: Path) -> dict[int, tuple[float, float]]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["train/loss/total"], r["train/grad_norm"])
            for r in records if "train/loss/total" in r}  # fmt: skip


def stopped_at(log: str) -> int:
    found = re.findall(r"preempted at step (\d+): checkpoint saved to", log)
    assert len(found) == 1, log[-4000:]  # process 0 speaks for the run
    return int(found[0])


def test_stopped_three_times_and_resubmitted_the_run_matches_one_uninterrupted_process(
    cluster, tmp_path
):
    slow = train_command(tmp_path, "slow-lcmsm-train", SLOW_STEP)
    workdir = tmp_path / "run"
    argv = ["--config", CONFIG, "--workdir", str(workdir), *ARGS,
            "--config.compile_cache_dir=" + str(tmp_path / "cache")]  # fmt: skip

    # 1. TERM to the job's tasks, as the time-limit warning (--signal=TERM@N) sends it,
    # while they compile: they agree on the first step they all reach and save it.
    job = submit(tmp_path, "first", argv, slow)
    wait_for_line(tmp_path, "first", job, r"^compiling the training step")
    subprocess.run(["scancel", "--signal=TERM", job], check=True, timeout=30)
    state, log = finish(tmp_path, "first", job)
    assert state == "COMPLETED 0:0", log[-4000:]
    first = stopped_at(log)
    assert 1 <= first <= 3 and (workdir / "checkpoints" / str(first)).is_dir(), log[-4000:]

    # 2. The same command resumes; TERM again, mid-run.
    job = submit(tmp_path, "second", argv, slow)
    wait_for_line(tmp_path, "second", job, rf"^step {first + 3}/")
    subprocess.run(["scancel", "--signal=TERM", job], check=True, timeout=30)
    state, log = finish(tmp_path, "second", job)
    assert state == "COMPLETED 0:0", log[-4000:]
    assert f"initial weights: resumed from {workdir / 'checkpoints' / str(first)}" in log
    second = stopped_at(log)
    assert first + 3 <= second < STEPS and (workdir / "checkpoints" / str(second)).is_dir()

    # 3. Resumed again; a job of the urgent partition preempts it.
    job = submit(tmp_path, "third", argv, slow)
    wait_for_line(tmp_path, "third", job, rf"^step {second + 3}/")
    urgent = subprocess.run(
        ["sbatch", "--parsable", "--partition=urgent", "--ntasks=2", "--cpus-per-task=1",
         f"--output={tmp_path}/urgent-%j.out", "--wrap", "true"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    state, log = finish(tmp_path, "third", job)
    assert state == "COMPLETED 0:0", log[-4000:]
    assert f"initial weights: resumed from {workdir / 'checkpoints' / str(second)}" in log
    third = stopped_at(log)
    assert second + 3 <= third < STEPS
    finish(tmp_path, "urgent", urgent)

    # 4. Submitted once more, the run completes.
    job = submit(tmp_path, "fourth", argv, slow)
    state, log = finish(tmp_path, "fourth", job)
    assert state == "COMPLETED 0:0", log[-4000:]
    assert f"step {STEPS}/{STEPS}" in log and "preempted" not in log

    # Every step's losses, across the four jobs, are one uninterrupted process's.
    reference = tmp_path / "one_process"
    assert train.main(["--config", CONFIG, "--workdir", str(reference), *ARGS,
                       "--config.mesh.data=4"]) == 0  # fmt: skip
    ours, theirs = losses(workdir), losses(reference)
    assert sorted(ours) == list(range(1, STEPS + 1))
    for step in theirs:
        np.testing.assert_allclose(ours[step], theirs[step], rtol=1e-5, err_msg=f"step {step}")


def test_a_notice_to_the_batch_shell_reaches_the_tasks(cluster, tmp_path):
    slow = train_command(tmp_path, "slow-lcmsm-train", SLOW_STEP)
    workdir = tmp_path / "run"
    argv = ["--config", CONFIG, "--workdir", str(workdir), *ARGS]
    job = submit(tmp_path, "batch", argv, slow)
    wait_for_line(tmp_path, "batch", job, r"^step 2/")
    subprocess.run(["scancel", "--batch", "--signal=TERM", job], check=True, timeout=30)
    state, log = finish(tmp_path, "batch", job)
    assert state == "COMPLETED 0:0", log[-4000:]
    assert "SIGUSR1 received" in log or "preemption notice received" in log, log[-4000:]
    assert (workdir / "checkpoints" / str(stopped_at(log))).is_dir()


def test_a_failing_task_stops_the_job_and_is_named(cluster, tmp_path):
    failing = train_command(tmp_path, "failing-lcmsm-train", """
if os.environ["SLURM_PROCID"] == "1":
    def broken(*args, **kwargs):
        raise RuntimeError("this task's data went away")
    train._next_batch = broken""")
    argv = ["--config", CONFIG, "--workdir", str(tmp_path / "run"), *ARGS]
    started = time.monotonic()
    job = submit(tmp_path, "failing", argv, failing)
    state, log = finish(tmp_path, "failing", job)
    assert state.startswith("FAILED") and not state.endswith(" 0:0"), (state, log[-4000:])
    assert re.search(r"task 1: Exited with exit code [1-9]", log), log[-4000:]
    assert "this task's data went away" in log
    # Task 0 was stopped, not left waiting for task 1 until config.mesh.peer_timeout.
    assert time.monotonic() - started < 600, log[-4000:]
