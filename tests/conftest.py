"""Test set-up: 8 simulated CPU devices, configured before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# glibc gives every thread that allocates its own heap arena (XLA:CPU runs many threads), and
# freed memory stays in them: test workers grew past 10 GB and the OOM killer ended one on
# the 24 GB machine. Set here, before the workers and the tests' subprocesses start.
os.environ.setdefault("MALLOC_ARENA_MAX", "2")

import atexit  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Tests build the same programs many times (fresh jit objects per run, and the same step in
# several files); a persistent compilation cache for the session lets repeated XLA
# compilations be skipped. pytest-xdist's workers inherit the folder of the process that
# started them, so a program one worker compiled is loaded by the other; that process
# removes it at the end.
_cache_dir = os.environ.get("LCMSM_TEST_COMPILATION_CACHE", "")
if not os.path.isdir(_cache_dir):
    _cache_dir = tempfile.mkdtemp(prefix="lcmsm-jax-cache-")
    os.environ["LCMSM_TEST_COMPILATION_CACHE"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
# Also the folder train/eval/predict use (it takes precedence over config.compile_cache_dir).
os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
jax.config.update("jax_compilation_cache_dir", _cache_dir)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)

# Parity tests compare against float32 PyTorch; keep XLA's matmuls at full precision.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Drop each test file's compiled programs and traces when it ends: a worker runs many
    files, and keeping them all made each worker grow past 9 GB (the persistent compilation
    cache still serves a program another file compiles again)."""
    yield
    jax.clear_caches()
    gc.collect()
    if sys.platform == "linux":  # hand the freed heap back to the system
        ctypes.CDLL("libc.so.6").malloc_trim(0)
