"""JAX's persistent compilation cache: compiled steps are kept on disk between runs.

Compiling the training step takes minutes (about 90 s for the demo model on a 2-core CPU,
more for MiT-B5); with the cache, a resumed or repeated run with the same config, shapes and
devices loads the executable instead. Keys cover the program, the devices and the compiler
flags, so a changed config compiles anew. Entries are written and read under a file lock
(the cache has a size bound), which makes one folder safe for several processes; in a
multi-process run only process 0 writes, the others read.
"""

import contextlib
import os
from collections.abc import Iterator

import jax
from jax.experimental.compilation_cache import compilation_cache

# Executables that compiled in less time than this are not worth a disk round trip.
MIN_COMPILE_SECONDS = 1.0
# Least recently used entries are dropped beyond this (a MiT-B5 step is ~10-50 MB).
MAX_BYTES = 8 * 1024**3


def enable(directory: str) -> str | None:
    """Use `directory` (`~` expanded, created) as the compilation cache; returns the folder
    in use (None: no cache).

    The environment variable JAX_COMPILATION_CACHE_DIR, when set, takes precedence (one
    setting for every job of a cluster or a test session); "" leaves JAX's own setting
    alone. Idempotent; may be called after other compilations and may switch folders.
    """
    if not directory or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return jax.config.jax_compilation_cache_dir
    path = os.path.abspath(os.path.expanduser(directory))
    if jax.config.jax_compilation_cache_dir == path:
        return path
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise OSError(
            f"config.compile_cache_dir = {directory!r}: cannot create {path} ({err.strerror}); "
            "pass a writable folder, or '' to compile without a cache"
        ) from err
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    # JAX decides once per process whether the cache is in use, at its first compilation;
    # anything compiled before this call (or an earlier folder) would have fixed that.
    compilation_cache.reset_cache()
    return path


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """No persistent cache in the block (neither read nor written): what is timed there is
    XLA compiling, never a load of an earlier run's executable."""
    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)
        compilation_cache.reset_cache()
