"""Command-line parsing shared by the commands that take an ml_collections `--config`.

Each call builds its own `FlagValues`, so commands can run many times in one process
(tests) and nothing is registered globally.
"""

from __future__ import annotations

from collections.abc import Callable

from absl import flags
from ml_collections import config_flags


class UsageError(Exception):
    """Bad command line; the message says which flag and what was expected."""


def parse(
    prog: str,
    argv: list[str] | None,
    define: Callable[[flags.FlagValues], None],
    *,
    required: tuple[str, ...] = (),
    config_help: str = "Experiment config file; override fields with --config.a.b=value.",
) -> flags.FlagValues:
    """Define `--config` plus the flags `define` adds, then parse `argv` (without program name).

    Dashes in flag names are accepted (`--torch-checkpoint` == `--torch_checkpoint`).
    Raises UsageError naming the offending flag or config field.
    """
    args = [prog] + [_underscore_flag_name(a) for a in (argv or [])]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, config_help, flag_values=flag_values, sys_argv=args
    )
    define(flag_values)
    try:
        flag_values(args)
    except flags.Error as err:
        raise UsageError(f"{prog}: {err}") from None
    except (AttributeError, KeyError) as err:
        # ml_collections reports an unknown --config.x.y override this way.
        raise UsageError(f"{prog}: unknown config field in an override: {err}") from None
    for name in ("config",) + required:
        if flag_values[name].value is None:
            raise UsageError(f"{prog}: --{name.replace('_', '-')} is required")
    return flag_values


def _underscore_flag_name(arg: str) -> str:
    if not arg.startswith("--") or arg.startswith("--config"):
        return arg
    name, sep, value = arg[2:].partition("=")
    return "--" + name.replace("-", "_") + sep + value
