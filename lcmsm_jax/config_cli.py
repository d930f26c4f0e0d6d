"""Command-line parsing and error reporting shared by the lcmsm-* commands.

Parsing: each call builds its own `FlagValues`, so commands can run many times in one process
(tests) and nothing is registered globally. `--help` prints the usage and exits 0.

Errors: a user mistake ends in one line that names the flag, config key or file, says what
was expected and what to do, and no traceback:

  exit 2  usage: an unknown or missing flag, a config file that does not load, a config
          value out of range (`UsageError`);
  exit 1  data and runtime failures: missing or unreadable files, data that does not fit,
          a full disk, a non-finite loss (`FAILURES`).

`--debug` (or `LCMSM_DEBUG=1`) lets the exception through instead, with its traceback. A
command's `main(argv)` parses its own command line (usage errors: message and 2); the
console entry points (`lcmsm_jax/cli.py`) run every `main` through `run_main`, which reports
the failures. Anything outside these classes is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextvars
import errno
import os
import re
import sys
from collections.abc import Callable, Sequence

from absl import flags
from ml_collections import config_dict, config_flags

DEBUG_ENV = "LCMSM_DEBUG"
HELP_FLAGS = ("-h", "-help", "--help", "--helpshort", "--helpfull")

# Exceptions that mean "the input or the machine is not as required", reported in one line.
# ValueError covers the project's own named errors (LayoutError, ManifestError,
# LabelFormatError, TextEmbeddingError, ...); OSError covers missing, unreadable and
# unwritable files; ImportError an optional package that is not installed;
# FloatingPointError a loss that became NaN/inf.
FAILURES: tuple[type[BaseException], ...] = (OSError, ValueError, ImportError, FloatingPointError)

_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
_debug = contextvars.ContextVar("lcmsm_debug", default=False)


class UsageError(Exception):
    """Bad command line or config value; the message says which flag or key and what was
    expected."""


# ----------------------------------------------------------------------------- parsing


def parse(
    prog: str,
    argv: list[str] | None,
    define: Callable[[flags.FlagValues], None],
    *,
    required: tuple[str, ...] = (),
    config_help: str = "Experiment config file; override fields with --config.a.b=value.",
    description: str = "",
    examples: Sequence[str] = (),
    takes_config: bool = True,
) -> flags.FlagValues:
    """Define `--config` (unless `takes_config` is False), `--debug` plus the flags `define`
    adds, then parse `argv` (without program name).

    Dashes in flag names are accepted (`--torch-checkpoint` == `--torch_checkpoint`).
    Raises UsageError naming the offending flag, config field or config file; prints the
    usage, the description and the `examples` and raises SystemExit(0) for `--help`, as
    argparse does.
    """
    args = [prog] + [_underscore_flag_name(a) for a in (argv or [])]
    flag_values = flags.FlagValues()
    if takes_config:
        config_flags.DEFINE_config_file(
            "config", None, config_help, flag_values=flag_values, sys_argv=args
        )
    flags.DEFINE_bool("debug", False, f"Show the traceback of an error (also: {DEBUG_ENV}=1).",
                      flag_values=flag_values)  # fmt: skip
    define(flag_values)
    if any(arg in HELP_FLAGS for arg in args[1:]):
        print(help_text(prog, flag_values, required, description, examples, takes_config))
        raise SystemExit(0)
    if not takes_config:
        _parse_args(prog, flag_values, args, None)
        _check_required(prog, flag_values, required)
        return flag_values
    config_file = _config_file(args)
    # ml_collections executes every config file into the same module, sys.modules
    # "config_config"; without this, a file read earlier in this process leaks its names
    # (its get_config, say) into the next one.
    sys.modules.pop("config_config", None)
    if config_file is not None and not os.path.isfile(config_file):
        raise UsageError(
            f"{prog}: --config {config_file}: no such file; pass an experiment config such as "
            "configs/demo.py"
        )
    _parse_args(prog, flag_values, args, config_file)
    _check_required(prog, flag_values, ("config",) + tuple(required))
    if not isinstance(flag_values.config, config_dict.ConfigDict):
        raise UsageError(
            f"{prog}: --config {config_file}: get_config() returned "
            f"{type(flag_values.config).__name__}, expected an ml_collections.ConfigDict"
        )
    return flag_values


def _check_required(prog: str, flag_values: flags.FlagValues, required: Sequence[str]) -> None:
    if flag_values.debug:  # main() called directly with --debug, not through run_main
        _debug.set(True)
    for name in required:
        if flag_values[name].value is None:
            raise UsageError(
                f"{prog}: --{name.replace('_', '-')} is required ({prog} --help lists the flags)"
            )


def _parse_args(prog: str, flag_values: flags.FlagValues, args: list[str], config_file) -> None:
    """Parse; turn absl's and the config loader's exceptions into UsageErrors (chained, so
    that --debug shows where in the config file it failed)."""
    where = f"--config {config_file}"
    try:
        flag_values(args)
    except flags.UnrecognizedFlagError as err:
        raise UsageError(f"{prog}: {err} ({prog} --help lists the flags)") from err
    except flags.Error as err:
        message = str(err)
        if "Error whilst parsing config file" in message:
            # The loader puts a whole traceback into the message; its last line is the error.
            last = message.strip().splitlines()[-1]
            raise UsageError(f"{prog}: {where}: get_config() failed: {last}") from err
        raise UsageError(f"{prog}: {message}") from err
    except SyntaxError as err:
        raise UsageError(f"{prog}: {where}: syntax error at line {err.lineno}: {err.msg}") from err
    except (AttributeError, KeyError) as err:
        raise UsageError(_override_error(prog, args, err, where)) from err
    except Exception as err:  # noqa: BLE001  (any error raised by the user's config module)
        raise UsageError(
            f"{prog}: {where}: loading it failed with {type(err).__name__}: {err}"
        ) from err


def _override_error(prog: str, args: list[str], err: Exception, where: str) -> str:
    """Message for an AttributeError/KeyError from a missing get_config or a bad override."""
    text = str(err.args[0]) if err.args else str(err)
    if "get_config" in text:
        return f"{prog}: {where}: the file defines no get_config() function"
    quoted = re.findall(r"'([^']+)'", text)
    field = quoted[-1] if quoted else text
    for arg in args:
        name = arg.partition("=")[0]
        if name.startswith("--config.") and field in name.split("."):
            return (
                f"{prog}: {arg}: the config has no field {field!r} there; the --config file "
                "lists the fields"
            )
    return f"{prog}: unknown config field in an override: {text}"


def _config_file(args: list[str]) -> str | None:
    """The path given to `--config` (without a `:argument` suffix), or None."""
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            return arg.partition("=")[2].split(":", 1)[0]
        if arg == "--config" and i + 1 < len(args):
            return args[i + 1].split(":", 1)[0]
    return None


def _underscore_flag_name(arg: str) -> str:
    if not arg.startswith("--") or arg.startswith("--config"):
        return arg
    name, sep, value = arg[2:].partition("=")
    return "--" + name.replace("-", "_") + sep + value


def help_text(
    prog: str,
    flag_values: flags.FlagValues,
    required: Sequence[str],
    description: str,
    examples: Sequence[str] = (),
    takes_config: bool = True,
) -> str:
    """Usage line, description, examples and one entry per flag (in definition order)."""
    needed = "".join(f" --{name.replace('_', '-')} ..." for name in required)
    config = " --config FILE" if takes_config else ""
    overrides = " [--config.KEY=VALUE ...]" if takes_config else ""
    lines = [f"usage: {prog}{config}{needed}{overrides} [flags]"]
    if description:
        lines += ["", description.strip()]
    if examples:
        lines += ["", "example:" if len(examples) == 1 else "examples:"]
        lines += [f"  {example}" for example in examples]
    lines += ["", "flags:"]
    for name in flag_values:
        flag = flag_values[name]
        unset = flag.default is None or flag.default is False or flag.default == ""
        unset = unset or "(default:" in flag.help  # the help says what the default means
        default = "" if unset else f" (default: {flag.default})"
        lines.append(f"  --{name.replace('_', '-')}: {flag.help}{default}")
    lines += [
        "",
        "Exit status: 0 done, 1 data or runtime failure, 2 bad command line or config value.",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reporting


def debug_enabled() -> bool:
    """Whether errors should keep their traceback (`--debug` or LCMSM_DEBUG=1)."""
    return _debug.get() or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def disk_full_error(err: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in `err`'s chain of causes, if any (libraries such as
    orbax re-raise it wrapped in their own exceptions)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL:
            return current
        current = current.__cause__ or current.__context__
    return None


def failure_message(prog: str, err: BaseException) -> str:
    """The one-line report of a failure: a full disk named as such, else the message."""
    full = disk_full_error(err)
    if full is not None:
        where = f" writing {full.filename}" if full.filename else ""
        return (
            f"{prog}: {_DISK_FULL[full.errno]}{where}; free space on that disk or write "
            "somewhere else (--workdir / --out)"
        )
    if "No space left on device" in str(err):  # wrapped without errno (e.g. tensorstore)
        return (
            f"{prog}: no space left on device ({str(err).splitlines()[0]}); free space on that "
            "disk or write somewhere else (--workdir / --out)"
        )
    return f"{prog}: {str(err) or type(err).__name__}"


def report_failure(prog: str, err: BaseException) -> int:
    """Print the one-line report of a data or runtime failure; returns exit status 1.

    Call it from the `except` block; with debugging on it re-raises `err` instead."""
    if debug_enabled():
        raise err
    print(failure_message(prog, err), flush=True)
    return 1


def report_usage(prog: str, err: UsageError) -> int:
    """Print a usage error (prefixed with the command unless it already is); returns 2.

    Call it from the `except` block; with debugging on it re-raises `err` instead."""
    if debug_enabled():
        raise err
    message = str(err)
    print(message if message.startswith(f"{prog}:") else f"{prog}: {message}", flush=True)
    return 2


def run_main(prog: str, argv: Sequence[str] | None, main: Callable[[list[str]], int | None]) -> int:
    """Run a command's `main(argv)` and turn user mistakes into one line and an exit status.

    `--debug` is taken out of `argv` (every command accepts it) and, like LCMSM_DEBUG=1,
    lets exceptions through with their tracebacks.
    """
    args = list(argv or [])
    token = _debug.set("--debug" in args)
    args = [a for a in args if a != "--debug"]
    try:
        return int(main(args) or 0)
    except UsageError as err:
        return report_usage(prog, err)
    except FAILURES as err:
        return report_failure(prog, err)
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print(f"{prog}: interrupted", flush=True)
        return 130
    except Exception as err:
        # Only a full disk wrapped in a library's own exception type is reported here;
        # anything else is a bug and keeps its traceback.
        if debug_enabled() or disk_full_error(err) is None:
            raise
        return report_failure(prog, err)
    finally:
        _debug.reset(token)
