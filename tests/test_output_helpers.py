"""The shared output helpers: atomic file replacement and progress lines."""

import io
import os

import pytest

from lcmsm_jax import atomic, progress


def test_replace_file_is_all_or_nothing(tmp_path):
    path = tmp_path / "sub" / "results.json"
    atomic.write_text(path, "old\n")
    assert path.read_text() == "old\n"
    umask = os.umask(0)
    os.umask(umask)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~umask)  # not mkstemp's 0600
    with pytest.raises(RuntimeError), atomic.replace_file(path) as f:
        f.write("half of the new")
        raise RuntimeError("disk went away")
    assert path.read_text() == "old\n"  # the old content, not a part of the new one
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]  # no temp file
    atomic.write_bytes(path, b"\x00new")
    assert path.read_bytes() == b"\x00new"
    with pytest.raises(ValueError, match="mode must be"):
        with atomic.replace_file(path, "a"):
            pass


def test_progress_prints_a_bounded_number_of_lines(monkeypatch):
    stream = io.StringIO()
    bar = progress.Progress("eval", total=1000, stream=stream, every_s=1e9)
    for _ in range(1000):
        bar.update()
    bar.finish()
    bar.finish()  # shown once
    lines = stream.getvalue().splitlines()
    # One line per tenth (the tenth tenth is the final line) and no carriage returns.
    assert len(lines) == 10 and "\r" not in stream.getvalue()
    assert lines[0].startswith("eval: 100/1000 images (10%)") and "ETA" in lines[0]
    assert lines[-1].startswith("eval: 1000/1000 images (100%)") and "ETA" not in lines[-1]
    # Without tenths a log gets a line every `every_s` seconds and the final one only.
    stream = io.StringIO()
    bar = progress.Progress("eval", total=1000, stream=stream, every_s=1e9, tenths=False)
    bar.update(1000)
    bar.finish()
    assert stream.getvalue().count("\n") == 1
    quiet = progress.Progress("eval", total=10, stream=None)
    quiet.update(10)
    quiet.finish()
    assert quiet.done == 10


def test_progress_rate_can_leave_out_the_first_update(monkeypatch):
    clock = iter([0.0, 100.0, 101.0, 101.0, 101.0])  # created; first update (compile); ...
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    bar = progress.Progress("eval", total=None, stream=None, skip_first=True)
    bar.update(4)  # t=100: the compiled first batch
    bar.update(6)  # t=101
    assert bar.rate() == pytest.approx(6.0)  # 6 images in the second after the first batch
    assert progress.format_seconds(3725) == "1h02m"
    assert progress.format_seconds(247) == "4m07s"
