"""Every console command answers --help: usage, an example command line and its flags."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lcmsm_jax import cli

ROOT = Path(__file__).parents[1]
# [project.scripts] of pyproject.toml (tomllib needs Python 3.11; the package supports 3.10).
_SECTION = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
SCRIPTS = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"$', _SECTION, flags=re.M))


def test_every_console_command_is_a_cli_function():
    assert set(SCRIPTS) == set(cli.COMMANDS)
    for prog, target in SCRIPTS.items():
        module, _, function = target.partition(":")
        assert module == "lcmsm_jax.cli" and callable(getattr(cli, function)), prog


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
def test_help(prog, capsys):
    assert cli.run(prog, ["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {prog} "), text[:200]
    assert "Unknown command line flag" not in text
    example = text.split("example", 1)[1].split("flags:", 1)[0] if "example" in text else ""
    assert f"  {prog} " in example, f"{prog} --help shows no example command line:\n{text}"
    assert "  --debug:" in text and "Exit status" in text


def test_installed_script_answers_help():
    # The console script itself (entry point -> cli -> command), as a user runs it.
    script = shutil.which("lcmsm-train", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("package not installed in this environment")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: lcmsm-train --config FILE")
