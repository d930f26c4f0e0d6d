"""`lcmsm-train` loses nothing on any way out: signals, kill -9, divergence, exceptions right
after a save, unreadable checkpoints, config changes on resume, same-seed reruns.

One tiny source-only configuration (its step compiles fastest) is shared by every run, so
the train step is compiled once per session; the subprocess runs read it from the session's
persistent compilation cache. `reference` is the uninterrupted run the others must equal.
"""

import contextlib
import functools
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from lcmsm_jax import (
    checkpoint,
    config_cli,
    demo,
    ladder,
    metrics_log,
    models,
    storage,
    train,
)

ROOT = Path(__file__).parents[1]
CONFIG = str(ROOT / "configs" / "base.py")
STEPS = 6
ARGS = [
    "--config", CONFIG,
    "--config.model.backbone=mit_b0",
    "--config.model.decode_head.fusion=conv",
    "--config.model.decode_head.embed_dim=16",
    "--config.model.decode_head.channels=16",
    "--config.model.lcmsm_head.embed_dim=16",
    "--config.model.lcmsm_head.channels=16",
    "--config.model.text_dim=12",
    "--config.text.embeddings=random:0",
    # Source-only: the smallest step that trains, checkpoints and resumes like any other.
    "--config.uda.enabled=False",
    "--config.uda.pseudo_label_head=decode",
    "--config.uda.masked_source=False",
    "--config.uda.masked_mix=False",
    "--config.uda.feature_distance_weight=0.0",
    "--config.data.source.rcs=False",
    "--config.data.source.dataset=synthetic",
    "--config.data.target.dataset=synthetic",
    "--config.data.eval.dataset=synthetic",
    "--config.data.synthetic.size=(64,128)",
    "--config.data.synthetic.num_images=16",
    "--config.data.source.scale=(128,64)",
    "--config.data.target.scale=(128,64)",
    "--config.data.crop_size=(64,64)",
    "--config.data.batch_size=2",
    "--config.optim.warmup_steps=2",
    "--config.mesh.data=1",
    f"--config.train.steps={STEPS}",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=2",
    "--config.train.keep_checkpoints=5",
    "--config.train.eval_every=-1",
    "--config.train.image_every=0",
]  # fmt: skip


def run(workdir, *extra) -> tuple[int, str]:
    """`lcmsm-train` in this process: (exit status, what it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = train.main([*ARGS, "--workdir", str(workdir), *extra])
    print(out.getvalue())  # shown by pytest when a test fails
    return status, out.getvalue()


def records(workdir) -> list[dict]:
    """metrics.jsonl without its wall-clock field."""
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def steps_saved(workdir) -> list[str]:
    """Everything in the checkpoint folder (finished steps, unfinished or set-aside saves)."""
    return sorted(os.listdir(Path(workdir) / checkpoint.RUN_CHECKPOINTS), key=str)


def saved(workdir, step: int) -> dict:
    """All arrays of checkpoint `step`: {item: {path: numpy array}}."""
    directory = Path(workdir) / checkpoint.RUN_CHECKPOINTS / str(step)
    out = {}
    for item in ("model", "teacher", "train"):
        tree = ocp.StandardCheckpointer().restore(directory / item)
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        out[item] = {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}
    return out


def assert_same_arrays(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for item in a:
        assert a[item].keys() == b[item].keys(), item
        for name, value in a[item].items():
            np.testing.assert_array_equal(value, b[item][name], err_msg=f"{item}{name}")


def copy_run(reference: Path, workdir: Path) -> Path:
    shutil.copytree(reference, workdir)
    return workdir


@pytest.fixture(scope="module", autouse=True)
def cache_everything():
    """Persist every compilation (model initialisers too), so the subprocess runs skip them."""
    before = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before)


@pytest.fixture(scope="module", autouse=True)
def one_jitted_step():
    """Reuse the jitted step across in-process runs with the same config: each `train()`
    builds its own, and tracing it plus loading it from the compilation cache costs more
    than the steps these tests take."""
    original, jitted = train._jit_train_step, {}

    def jit_train_step(config, *args):
        key = (config.to_json_best_effort(), str(args[-1]))  # config and mesh
        if key not in jitted:
            jitted[key] = original(config, *args)
        return jitted[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "_jit_train_step", jit_train_step)
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run: checkpoints 2, 4, 6."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    status, printed = run(workdir)
    assert status == 0
    assert "initial weights: random initialisation (seed 0)" in printed
    assert steps_saved(workdir) == ["2", "4", "6"]
    return workdir


# ----------------------------------------------------------------------------- config checks


def test_keep_checkpoints_below_one_is_refused(tmp_path):
    status, printed = run(tmp_path / "run", "--config.train.keep_checkpoints=0")
    assert status == 2
    assert "config.train.keep_checkpoints" in printed
    assert not (tmp_path / "run" / checkpoint.RUN_CHECKPOINTS).exists()
    # The library entry point checks it too (orbax would otherwise delete every checkpoint).
    fv = config_cli.parse("t", [*ARGS, "--config.train.keep_checkpoints=0"], lambda fv: None)
    with pytest.raises(config_cli.UsageError, match=r"config\.train\.keep_checkpoints = 0"):
        train.train(fv.config, tmp_path / "lib")
    assert not (tmp_path / "lib").exists()


def test_model_change_on_resume_is_refused_and_other_changes_are_reported(reference, tmp_path):
    workdir = copy_run(reference, tmp_path / "run")
    config_json = (workdir / "config.json").read_bytes()
    metrics = (workdir / "metrics.jsonl").read_bytes()
    status, printed = run(workdir, "--config.model.decode_head.channels=32")
    assert status == 2
    assert "config.model.decode_head.channels: 16 -> 32" in printed
    assert (workdir / "config.json").read_bytes() == config_json
    assert (workdir / "metrics.jsonl").read_bytes() == metrics
    assert steps_saved(workdir) == ["2", "4", "6"]

    # Without config.json the checkpoint's own shapes are compared, naming the variables.
    (workdir / "config.json").unlink()
    status, printed = run(workdir, "--config.model.decode_head.channels=32")
    assert status == 2
    assert "checkpoints/6 does not fit this run: model." in printed and "decode_head" in printed
    assert not (workdir / "config.json").exists()

    # Anything else is accepted, reported in one line, and config.json follows.
    (workdir / "config.json").write_bytes(config_json)
    status, printed = run(workdir, "--config.train.log_every=3")
    assert status == 0
    assert "config changes since the last session (accepted): config.train.log_every: 1 -> 3" in (
        printed
    )
    assert json.loads((workdir / "config.json").read_text())["train"]["log_every"] == 3
    assert f"initial weights: resumed from {workdir / 'checkpoints' / '6'}" in printed
    assert "random initialisation" not in printed


# ----------------------------------------------------------------------------- determinism


@pytest.mark.slow
def test_same_seed_twice_gives_identical_metrics_and_weights(reference, tmp_path):
    assert run(tmp_path / "again")[0] == 0
    assert records(tmp_path / "again") == records(reference)
    assert [r["step"] for r in records(reference)] == list(range(1, STEPS + 1))
    assert_same_arrays(saved(tmp_path / "again", STEPS), saved(reference, STEPS))


# ----------------------------------------------------------------------------- exits


def _failing_at(draw: int, action):
    """A `_next_batch` that calls `action()` when asked for batch number `draw` (from 1)."""
    original, calls = train._next_batch, []

    def next_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == draw:
            action()
        return original(*args, **kwargs)

    return next_batch


@pytest.mark.slow
def test_an_exception_right_after_a_save_keeps_that_checkpoint(tmp_path, monkeypatch):
    def corrupt_image():
        raise OSError("synthetic/00003.png: truncated PNG")

    # The save of step 2 is still being written when the data pipeline fails.
    monkeypatch.setattr(train, "_next_batch", _failing_at(3, corrupt_image))
    with pytest.raises(OSError, match="truncated PNG"):
        run(tmp_path / "run")
    assert steps_saved(tmp_path / "run") == ["2"]  # finished, no *.orbax-checkpoint-tmp
    assert (tmp_path / "run" / "checkpoints" / "2" / "commit_success.txt").is_file()


def _hold_lock_in_a_subprocess(workdir: Path) -> subprocess.Popen:
    """Another process holding `workdir`'s run lock (as a running lcmsm-train would)."""
    workdir.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys, time; from pathlib import Path; from lcmsm_jax import workdir_lock\n"
        "with workdir_lock.hold(Path(sys.argv[1])):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(workdir)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_on_a_busy_workdir_is_refused_in_one_line(tmp_path):
    holder = _hold_lock_in_a_subprocess(tmp_path / "run")
    try:
        status, printed = run(tmp_path / "run")
        assert status == 2
        lines = [x for x in printed.splitlines() if x.strip()]
        assert len(lines) == 1, printed
        assert lines[0].startswith(f"lcmsm-train: {tmp_path / 'run'} is in use by lcmsm-train")
        assert f"pid {holder.pid}" in lines[0] and "another --workdir" in lines[0]
        assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was started
    finally:
        holder.kill()  # kill -9: the kernel releases the lock, nothing is left stale
        holder.wait()
    status, printed = run(tmp_path / "run", "--config.train.steps=1")
    assert status == 0 and steps_saved(tmp_path / "run") == ["1"]
    assert f"pid {os.getpid()}" in (tmp_path / "run" / "run.lock").read_text()


# ----------------------------------------------------------------------------- disks and folders


@contextlib.contextmanager
def _read_only(folder: Path):
    """`folder` (created, under a world-traversable parent) cannot be written to by this
    process: mode 0555, and when running as root (who ignores modes) with the effective uid
    of `nobody` for the duration of the block."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    as_root = os.geteuid() == 0
    if as_root:
        os.seteuid(65534)
    try:
        yield
    finally:
        if as_root:
            os.seteuid(0)
        folder.chmod(0o755)


@pytest.fixture
def open_tmp():
    """A folder under /tmp that any user may enter and write to (tmp_path's parents are
    private to the user running the tests)."""
    path = Path(tempfile.mkdtemp(prefix="lcmsm-open-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_read_only_checkpoint_folder_is_refused_before_anything_runs(open_tmp):
    workdir = open_tmp / "run"
    workdir.mkdir(mode=0o777)
    workdir.chmod(0o777)
    with _read_only(workdir / "checkpoints"):
        status, printed = run(workdir)
    lines = [x for x in printed.splitlines() if x.strip()]
    assert status == 1 and len(lines) == 1, printed
    assert lines[0] == (
        f"lcmsm-train: the checkpoint folder {workdir / 'checkpoints'} is not writable "
        "(permission denied); make it writable or train in another --workdir"
    )
    assert not list((workdir / "checkpoints").iterdir())


def test_too_little_room_for_one_checkpoint_is_refused_before_compiling(tmp_path, monkeypatch):
    needed = []
    estimate = storage.check_room

    def record(folder, size):  # the estimate, given the real free space
        needed.append(size)
        estimate(folder, size)

    monkeypatch.setattr(storage, "check_room", record)
    status, _ = run(tmp_path / "measured", "--config.train.steps=2")
    assert status == 0
    written = sum(f.stat().st_size for f in (tmp_path / "measured/checkpoints/2").rglob("*")
                  if f.is_file())  # fmt: skip
    # The estimate covers what one checkpoint takes, without a gross overestimate.
    assert written <= needed[0] <= written + 2 * storage._MARGIN_BYTES, (written, needed)

    monkeypatch.setattr(storage, "check_room", estimate)
    disk = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(storage.shutil, "disk_usage",
                        lambda path: disk._replace(free=needed[0] - 1))  # fmt: skip
    status, printed = run(tmp_path / "run")
    lines = [x for x in printed.splitlines() if x.strip()]
    assert status == 1, printed
    assert lines[-1].startswith(f"lcmsm-train: {tmp_path / 'run' / 'checkpoints'} has "), printed
    assert f"needs about {needed[0] / 1e9:.2f} GB" in lines[-1]
    assert not any(x.startswith("step ") for x in lines)  # refused before the first step
    assert steps_saved(tmp_path / "run") == []


def test_a_failed_save_is_one_line_and_leaves_no_unfinished_folder(tmp_path):
    """A real failing write: the checkpoint's data files exceed the process's file-size
    limit (`ulimit -f`; Python ignores SIGXFSZ, so the write fails with EFBIG). The run
    compiles without the session's cache, whose entries the limit would truncate."""
    workdir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    limited = ["bash", "-c", 'ulimit -f 1000 && exec "$@"', "--"]  # 1000 blocks of 1 KiB
    done = subprocess.run(
        [*limited, sys.executable, "-m", "lcmsm_jax.train", *ARGS, "--workdir", str(workdir),
         "--config.compile_cache_dir="],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    printed = done.stdout + done.stderr
    print(printed)
    assert done.returncode == 1
    assert "Traceback" not in printed and "ERROR:" not in printed
    reports = [x for x in printed.splitlines() if x.startswith("lcmsm-train:")]
    assert reports == [
        f"lcmsm-train: the checkpoint of step 2 could not be written to {workdir / 'checkpoints'}"
        ": file too large (a file-size limit: `ulimit -f`, or the file system's); its "
        "unfinished folder was removed; of this run's checkpoints, none is complete yet; free "
        "space or train in another --workdir"
    ]
    assert not any(x.startswith("step 6/") for x in printed.splitlines())  # it stopped
    assert list((workdir / "checkpoints").iterdir()) == []
    status, _ = run(workdir, "--config.train.steps=2")  # without the limit, it trains
    assert status == 0 and steps_saved(workdir) == ["2"]


def _evaluation_failing(monkeypatch, error: Exception) -> list[int]:
    """Every evaluation during training raises `error` (as a deleted val label would);
    returns the steps whose evaluation was attempted. Checkpoints on disk at the moment of
    each attempt are recorded as (step, saved steps)."""
    attempts = []

    def evaluate(evaluator, state, config, workdir, step):
        attempts.append((step, steps_saved(workdir)))
        raise error

    monkeypatch.setattr(train, "_evaluate", evaluate)
    return attempts


def test_a_failing_evaluation_stops_with_its_step_already_checkpointed(tmp_path, monkeypatch):
    missing = FileNotFoundError(2, "No such file or directory", "val/a_gtFine_labelIds.png")
    attempts = _evaluation_failing(monkeypatch, missing)
    # Step 3 is an evaluation step and not a checkpoint_every step.
    status, printed = run(tmp_path / "run", "--config.train.eval_every=3")
    assert status == 1
    assert attempts == [(3, ["2", "3"])]  # step 3 was on disk before the evaluation ran
    assert steps_saved(tmp_path / "run") == ["2", "3"]
    assert (tmp_path / "run" / "checkpoints" / "3" / "commit_success.txt").is_file()
    line = next(x for x in printed.splitlines() if "evaluation at step 3 failed" in x)
    assert line.startswith("lcmsm-train: ")
    assert "val/a_gtFine_labelIds.png" in line and "FileNotFoundError" in line
    assert str(tmp_path / "run" / "checkpoints" / "3") in line
    assert "on_eval_error=continue" in line
    assert "Traceback" not in printed


def test_a_failing_evaluation_can_be_skipped_and_training_goes_on(tmp_path, monkeypatch):
    attempts = _evaluation_failing(monkeypatch, OSError("val/b.png: truncated PNG"))
    status, printed = run(
        tmp_path / "run", "--config.train.eval_every=3", "--config.train.on_eval_error=continue"
    )
    assert status == 0
    assert [step for step, _ in attempts] == [3, 6]
    assert steps_saved(tmp_path / "run") == ["2", "3", "4", "6"]
    skipped = [x for x in printed.splitlines() if "training goes on without this evaluation" in x]
    assert len(skipped) == 2 and "truncated PNG" in skipped[0]
    assert not any(r.get("eval/mIoU") is not None for r in records(tmp_path / "run"))


def test_on_eval_error_is_checked(tmp_path):
    status, printed = run(tmp_path / "run", "--config.train.on_eval_error=ignore")
    assert status == 2
    assert "config.train.on_eval_error" in printed and "stop, continue" in printed


@pytest.mark.slow
def test_ctrl_c_checkpoints_the_step_and_the_rerun_matches(reference, tmp_path, monkeypatch):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    ctrl_c = functools.partial(signal.raise_signal, signal.SIGINT)  # while batch 3 is read
    monkeypatch.setattr(train, "_next_batch", _failing_at(3, ctrl_c))
    status, printed = run(tmp_path / "run")
    assert status == 0
    where = tmp_path / "run" / "checkpoints" / "3"
    assert "SIGINT received: checkpointing step 3, then stopping" in printed
    assert (
        f"preempted at step 3: checkpoint saved to {where}; run the same command to resume"
        in printed
    )
    assert steps_saved(tmp_path / "run") == ["2", "3"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers

    monkeypatch.undo()
    status, printed = run(tmp_path / "run")
    assert status == 0 and f"initial weights: resumed from {where}" in printed
    assert records(tmp_path / "run") == records(reference)
    assert_same_arrays(saved(tmp_path / "run", STEPS), saved(reference, STEPS))


def test_a_repeated_notice_is_ignored_and_ctrl_c_after_one_stops_at_once():
    """Schedulers repeat their notice (SLURM at the end of a preemption's grace time; the
    batch shell's SIGUSR1 on top of the tasks' SIGTERM): the stop under way must go on."""
    from lcmsm_jax.guards import StopSignals

    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    interrupted = []  # what the handler in place before (here: a known one) receives
    before = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        handlers = [signal.getsignal(sig) for sig in wanted]
        with StopSignals() as stop:
            signal.raise_signal(signal.SIGUSR1)
            assert stop.received == "SIGUSR1"
            signal.raise_signal(signal.SIGTERM)  # would end the process if it were not caught
            signal.raise_signal(signal.SIGUSR1)
            assert stop.received == "SIGUSR1" and stop.requested(1, manager=None)
            assert interrupted == []
            signal.raise_signal(signal.SIGINT)  # handed to the previous handler: at once
            assert interrupted == [signal.SIGINT]
        assert [signal.getsignal(sig) for sig in wanted] == handlers
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_signal_during_set_up_stops_before_the_first_step(tmp_path, monkeypatch):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    resolve = train.text.resolve

    def resolve_and_get_sigterm(*args, **kwargs):  # while the model is being set up
        signal.raise_signal(signal.SIGTERM)
        return resolve(*args, **kwargs)

    monkeypatch.setattr(train.text, "resolve", resolve_and_get_sigterm)
    status, printed = run(tmp_path / "run")
    assert status == 0
    assert (
        "SIGTERM received before the first step of this session: stopped at step 0, nothing "
        "new to save; run the same command to go on" in printed
    )
    assert not any(x.startswith("step ") for x in printed.splitlines())  # nothing compiled
    assert steps_saved(tmp_path / "run") == []
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_a_signal_during_the_last_step_stops_the_demo_before_its_comparisons(
    tmp_path, monkeypatch
):
    compared = []
    monkeypatch.setattr(ladder, "compare", lambda *args, **kwargs: compared.append(args))
    sigterm = functools.partial(signal.raise_signal, signal.SIGTERM)
    monkeypatch.setattr(train, "_next_batch", _failing_at(STEPS, sigterm))
    out = io.StringIO()
    workdir = tmp_path / "run"
    with contextlib.redirect_stdout(out):
        status = demo.main([*ARGS, "--workdir", str(workdir),
                            "--config.train.compare_with=('source_only',)"])  # fmt: skip
    printed = out.getvalue()
    print(printed)
    assert status == 0
    assert "SIGTERM received during the last step: it is saved; stopping" in printed
    assert f"preempted at step {STEPS}: checkpoint saved to {workdir / 'checkpoints'}" in printed
    assert steps_saved(workdir) == ["2", "4", "6"]
    assert compared == []  # the comparison runs did not start


def _poison(key: str, before_step: int):
    """A `_jit_train_step` whose step `before_step` gets NaN in one leaf of state[key]."""
    original = train._jit_train_step

    def jit_train_step(*args):
        step_fn = original(*args)

        def step(state, batch, rng):
            if int(state["step"]) == before_step - 1:
                leaves, treedef = jax.tree.flatten(state[key])
                i = next(i for i, x in enumerate(leaves) if x.dtype == np.float32 and x.size > 1)
                leaves[i] = leaves[i] * np.nan
                state = {**state, key: jax.tree.unflatten(treedef, leaves)}
            return step_fn(state, batch, rng)

        return step

    return jit_train_step


@pytest.mark.slow
@pytest.mark.parametrize(
    "key, step, message",
    [
        # NaN weights: the loss of step 3 is NaN (found at the save of step 4's fetch).
        ("params", 3, r"non-finite loss at step 3: loss/source=nan, loss/total=nan \(batch: "
                      r"source \(synthetic\) item \d+, item \d+; target \(synthetic\) item"),
        # NaN optimiser moments: step 4's loss is finite, the state after it is not.
        ("opt_state", 4, r"non-finite values in the training state after step 4, whose loss "
                         r"terms are finite: update 4 overflowed \(batch: source"),
    ],
)  # fmt: skip
def test_divergence_names_a_finite_checkpoint_and_saves_nothing_diverged(
    tmp_path, monkeypatch, key, step, message
):
    monkeypatch.setattr(train, "_jit_train_step", _poison(key, step))
    workdir = tmp_path / "run"
    # log_every=0: losses are fetched only at checkpoints; the step is still named exactly.
    status, printed = run(workdir, "--config.train.log_every=0")
    assert status == 1
    assert re.search(message, printed), printed
    assert f"the last good checkpoint is step 2 ({workdir / 'checkpoints' / '2'})." in printed
    assert steps_saved(workdir) == ["2"]
    for item in saved(workdir, 2).values():
        assert all(np.isfinite(v).all() for v in item.values() if v.dtype.kind == "f")


# ----------------------------------------------------------------------------- unreadable


def _truncate_largest_file(directory: Path) -> None:
    largest = max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:100])


def test_evaluating_an_unreadable_checkpoint_is_one_clear_error(reference, tmp_path, capfd):
    """lcmsm-eval / lcmsm-predict restore one named step: no fallback, one line, no dump."""
    workdir = copy_run(reference, tmp_path / "run")
    _truncate_largest_file(workdir / "checkpoints" / "6" / "model")
    config = config_cli.parse("lcmsm-train", ARGS, lambda fv: None).config
    model = models.Segmentor(config.model, rngs=nnx.Rngs(0))
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.restore_weights(workdir, model)
    message = str(err.value)
    assert message.startswith(f"checkpoint {workdir / 'checkpoints' / '6'} is unreadable (")
    assert "evaluate another step with --step (available: [2, 4])" in message
    assert "\n" not in message
    assert "Traceback" not in capfd.readouterr().err
    assert checkpoint.restore_weights(workdir, model, step=4) == 4


@pytest.mark.slow
def test_unreadable_latest_checkpoint_falls_back_to_the_one_before(reference, tmp_path, capfd):
    workdir = copy_run(reference, tmp_path / "run")
    _truncate_largest_file(workdir / "checkpoints" / "6" / "model")
    # What a kill during a save leaves (orbax renames it to "6" once complete).
    shutil.copytree(
        workdir / "checkpoints" / "4", workdir / "checkpoints" / "6.orbax-checkpoint-tmp"
    )
    status, printed = run(workdir)
    assert status == 0
    assert "removing 6.orbax-checkpoint-tmp: a checkpoint save that was interrupted" in printed
    # One line naming the variable and file that failed (TensorStore's own first line).
    assert re.search(
        rf"warning: checkpoint {re.escape(str(workdir / 'checkpoints' / '6'))} is unreadable "
        r"\(OUT_OF_RANGE: Error reading \"[\w.]+/[\d.]+\" in OCDBT database at local file .*\); "
        r"trying step 4\n",
        printed,
    ), printed
    assert f"renamed the unreadable checkpoint to {workdir / 'checkpoints' / '6.corrupt'}" in (
        printed
    )
    # No echo of the failed read on the console (abandoned reads, their TensorStore specs).
    console = printed + "".join(capfd.readouterr())
    assert "Traceback" not in console and "TensorStore(" not in console
    assert steps_saved(workdir) == ["2", "4", "6", "6.corrupt"]
    # Steps 5 and 6 again, exactly as the first time.
    assert records(workdir) == records(reference)
    assert_same_arrays(saved(workdir, STEPS), saved(reference, STEPS))


def test_no_readable_checkpoint_is_one_clear_error(reference, tmp_path):
    workdir = copy_run(reference, tmp_path / "run")
    for step in ("2", "4", "6"):
        (workdir / "checkpoints" / step / "train" / "_METADATA").unlink()
    with pytest.raises(checkpoint.CheckpointError) as error:
        run(workdir)
    message = str(error.value)
    assert message.startswith(f"no checkpoint in {workdir / 'checkpoints'} can be read (step 6:")
    assert "\n" not in message and "nothing was changed" in message
    assert steps_saved(workdir) == ["2", "4", "6"]


# ----------------------------------------------------------------------------- real processes


def _start(workdir: Path) -> tuple[subprocess.Popen, queue.Queue]:
    """`python -m lcmsm_jax.train` with this session's devices and compilation cache."""
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_DEFAULT_MATMUL_PRECISION=str(jax.config.jax_default_matmul_precision),
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "lcmsm_jax.train", *ARGS, "--workdir", str(workdir)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return process, lines


def _wait_for(lines: queue.Queue, seen: list, prefix: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not any(line.startswith(prefix) for line in seen):
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
        assert line is not None, "\n".join(seen)
        seen.append(line)


def _drain(process: subprocess.Popen, lines: queue.Queue, seen: list) -> int:
    status = process.wait(timeout=600)
    while (line := lines.get(timeout=60)) is not None:
        seen.append(line)
    return status


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_exits_0(reference, tmp_path):
    workdir = tmp_path / "run"
    process, lines = _start(workdir)
    seen: list[str] = []
    _wait_for(lines, seen, "step 1/")
    process.send_signal(signal.SIGTERM)
    assert _drain(process, lines, seen) == 0, "\n".join(seen)
    stopped = [line for line in seen if line.startswith("preempted at step ")]
    assert stopped, "\n".join(seen)
    step = int(stopped[0].split()[3].rstrip(":"))
    assert 1 < step < STEPS
    where = workdir / "checkpoints" / str(step)
    assert stopped[0] == (
        f"preempted at step {step}: checkpoint saved to {where}; run the same command to resume"
    )
    assert (where / "commit_success.txt").is_file()
    assert not [name for name in steps_saved(workdir) if "tmp" in name]

    status, printed = run(workdir)
    assert status == 0 and f"initial weights: resumed from {where}" in printed
    assert records(workdir) == records(reference)
    assert_same_arrays(saved(workdir, STEPS), saved(reference, STEPS))


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_then_same_command_is_bit_identical(reference, tmp_path):
    workdir = tmp_path / "run"
    process, lines = _start(workdir)
    seen: list[str] = []
    _wait_for(lines, seen, "step 3/")  # step 3 is logged after checkpoint 2 was queued
    deadline = time.monotonic() + 300
    while not (workdir / "checkpoints" / "2").is_dir() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    process.kill()
    _drain(process, lines, seen)
    logged = {r["step"] for r in records(workdir)}
    assert max(logged) >= 3  # at least one step logged after the checkpoint: logged again

    status, printed = run(workdir)
    assert status == 0
    assert "initial weights: resumed from" in printed and "random initialisation" not in printed
    steps = [r["step"] for r in records(workdir)]
    assert steps == sorted(set(steps)), "steps logged twice"
    assert records(workdir) == records(reference)
    assert_same_arrays(saved(workdir, STEPS), saved(reference, STEPS))


def test_metrics_log_drops_what_was_logged_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 2, "eval/mIoU": 1}\n{"st')
    assert metrics_log.drop_after(path, 2) == 2  # step 3 and the record cut off by a kill
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n{"step": 2, "eval/mIoU": 1}\n'
    assert metrics_log.drop_after(path, 2) == 0
    assert metrics_log.drop_after(tmp_path / "absent.jsonl", 0) == 0
