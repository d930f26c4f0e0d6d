"""The persistent compilation cache (config.compile_cache_dir): a compiled program is
written to the configured folder and loaded from it by a later compilation of the same
program, instead of being compiled again."""

import jax
import jax.numpy as jnp
import pytest

from lcmsm_jax import compile_cache


@pytest.fixture
def own_cache(monkeypatch):
    """The test session's cache folder (conftest.py) is restored afterwards."""
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    before = {
        name: getattr(jax.config, name)
        for name in (
            "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs",
            "jax_compilation_cache_max_size",
        )
    }
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    jax.experimental.compilation_cache.compilation_cache.reset_cache()


def _program(x):
    # Long enough to compile that it is written (MIN_COMPILE_SECONDS is lowered below).
    for i in range(40):
        x = jnp.tanh(x @ x.T + i)
    return x


def _cache_hits(fn) -> int:
    hits = []

    def listen(event, **_):
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    jax.monitoring.register_event_listener(listen)
    try:
        fn()
    finally:
        jax.monitoring.unregister_event_listener(listen)
    return len(hits)


def test_second_compilation_loads_the_program_from_the_folder(own_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "MIN_COMPILE_SECONDS", 0.0)
    folder = tmp_path / "cache" / "xla"
    assert compile_cache.enable(str(folder)) == str(folder)
    x = jnp.ones((32, 32))
    # A fresh jit object each time: what a new process (a resumed run) would compile.
    assert _cache_hits(lambda: jax.jit(_program).lower(x).compile()) == 0
    written = sorted(p.name for p in folder.iterdir() if p.name.startswith("jit__program"))
    assert written, f"nothing written to {folder}: {sorted(p.name for p in folder.iterdir())}"
    jax.clear_caches()  # drop the in-memory executables
    assert _cache_hits(lambda: jax.jit(_program).lower(x).compile()) == 1
    # Idempotent: enabling the same folder again changes nothing.
    assert compile_cache.enable(str(folder)) == str(folder)


def test_environment_variable_and_empty_setting_take_precedence(own_cache, tmp_path, monkeypatch):
    in_use = jax.config.jax_compilation_cache_dir
    assert compile_cache.enable("") == in_use  # "" leaves JAX's setting alone
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", in_use or "/elsewhere")
    assert compile_cache.enable(str(tmp_path / "ignored")) == in_use
    assert not (tmp_path / "ignored").exists()


def test_unwritable_folder_names_the_config_key(own_cache, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=r"config.compile_cache_dir.*file/xla.*writable"):
        compile_cache.enable(str(blocker / "xla"))
