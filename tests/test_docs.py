"""README.md and the user guide (docs/*.md) stay true to the code.

* Every relative link points to a file that exists, and a `#anchor` to a heading of that
  page (GitHub's slugs: lowercase, punctuation other than `-` and `_` dropped, spaces to `-`).
* Every command line they show that starts with one of the project's commands (the console
  scripts of pyproject.toml, `python tools/*.py`, the `launch/` scripts and `sbatch
  launch/slurm.sbatch`, which pass their arguments to `lcmsm-train`) is accepted by that
  command's own parser, without running anything: each flag is one the command defines, a
  literal `--config` file exists and each `--config.a.b=v` names a field of that config.
  A complete command line in a fenced block (no `...`, no placeholder such as `<i>`, `$X`,
  `DIR` or `C.py`) is parsed whole by the command's parser, values and required flags
  included. Inline `code` that starts with a command is checked for flag and key names.

A failure names the page, the line and the flag or key.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import inspect
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest
from absl import flags
from ml_collections import config_dict, config_flags

from lcmsm_jax import cli, config_cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [project.scripts] of pyproject.toml (tomllib needs Python 3.11; the package supports 3.10).
_SECTION = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
SCRIPTS = set(re.findall(r'^([\w-]+) = "[\w.:]+"$', _SECTION, flags=re.M))
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
_REAL_PARSE = config_cli.parse
# An inline code span (not across a blank line); a link or image: [text](target "title").
INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n\s*\n).)+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\)")


# ----------------------------------------------------------------------------- markdown


@dataclass
class Page:
    path: Path
    prose: str  # the text with fenced blocks blanked out (line numbers kept)
    blocks: list[tuple[int, str, list[str]]]  # (first line number, language, lines)

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))


@functools.cache
def read_page(path: Path) -> Page:
    prose, blocks, fence, block = [], [], None, None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        opening = re.match(r"\s*(`{3,}|~{3,})\s*([\w+-]*)", line)
        if fence is None and opening:
            fence, block = opening.group(1), (number + 1, opening.group(2).lower(), [])
            prose.append("")
        elif fence is not None and line.strip().startswith(fence):
            blocks.append(block)
            fence = None
            prose.append("")
        elif fence is not None:
            block[2].append(line)
            prose.append("")
        else:
            prose.append(line)
    return Page(path, "\n".join(prose), blocks)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _inline_code(prose: str) -> list[tuple[int, str]]:
    """(line, content) of every inline code span (within a paragraph)."""
    return [(_line_of(prose, m.start()), m.group(2)) for m in INLINE_CODE.finditer(prose)]


def _without_inline_code(prose: str) -> str:
    return INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for line in read_page(path).prose.splitlines():
        heading = re.match(r" {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$", line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_github_slugs():
    assert slug("The arithmetic for MiT-B5 (512x512 crops, 2 + 2 images)") == (
        "the-arithmetic-for-mit-b5-512x512-crops-2--2-images"
    )
    assert slug("5.7 Multi-resolution (HRDA) data") == "57-multi-resolution-hrda-data"
    assert slug("GPU: `tools/device_check.sh`") == "gpu-toolsdevice_checksh"
    assert slug("[Models](models.md) and `x`") == "models-and-x"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    page = read_page(path)
    text = _without_inline_code(page.prose)
    problems = []
    for link in LINK.finditer(text):
        target = link.group(1)
        if not target or re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, mailto:
            continue
        where = f"{page.name}:{_line_of(text, link.start())}: link ({target})"
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{where}: {file_part} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: {resolved.relative_to(ROOT)} has no heading #{anchor}")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- command lines


@dataclass
class Command:
    page: str
    line: int
    prog: str  # console script, or tools/X.py
    args: list[str]
    fenced: bool
    partial: bool = False  # `...` stands for arguments left out
    context_config: str | None = None  # of a partial line: the config of the page's last line

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}: {self.prog}"


def _logical_lines(lines: list[str], first: int):
    """(line number, text) of each shell command: `\\` continuations and quoted strings
    that run over several lines are joined."""
    start, parts = None, []
    for number, line in enumerate(lines, start=first):
        if start is None:
            start = number
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        parts.append(line)
        text = "\n".join(parts)
        try:
            shlex.split(text, comments=True)
        except ValueError:  # an open quote: the string goes on on the next line
            continue
        yield start, text
        start, parts = None, []
    if parts:
        yield start, "\n".join(parts)


_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
_OPERATORS = {"&&", "||", "|", ";", "&"}


def _commands_in(tokens: list[str], variables: dict[str, list[str]]):
    """(program, arguments) of each command in a tokenised shell line, or None."""
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token not in _OPERATORS:
            expanded = variables.get(re.sub(r"^\$\{?(\w+)\}?$", r"\1", token))
            segment += expanded if token.startswith("$") and expanded is not None else [token]
            continue
        env = {}
        while segment and _ASSIGNMENT.match(segment[0]):
            name, _, value = segment.pop(0).partition("=")
            env[name] = value
        if segment:
            yield _program(segment, env)
        segment = []


def _program(words: list[str], env: dict[str, str]) -> tuple[str, list[str]] | None:
    head, rest = words[0], words[1:]
    if head in SCRIPTS:
        return head, rest
    if head in ("python", "python3") and rest and re.fullmatch(r"tools/\w+\.py", rest[0]):
        return rest[0], rest[1:]
    train = env.get("LCMSM_COMMAND", "lcmsm-train")
    if head == "launch/local.sh":
        return train, rest[1:]  # N, then the command's arguments
    if head == "launch/tpu_pod.sh":
        return "lcmsm-train", rest[2:]  # TPU name, zone, then the arguments
    if head == "sbatch" and "launch/slurm.sbatch" in rest:
        return "lcmsm-train", rest[rest.index("launch/slurm.sbatch") + 1 :]
    return None


def _optional(token: str) -> str:
    """`[--flag=v]`, `[--flag` and `v]` (optional arguments in a usage line) -> the argument."""
    return token.removeprefix("[").removesuffix("]") if token not in ("[", "]") else ""


@functools.cache
def commands(path: Path) -> list[Command]:
    page = read_page(path)
    found = []
    for first, language, lines in page.blocks:
        if language not in SHELL_LANGUAGES:
            continue
        variables: dict[str, list[str]] = {}
        for number, text in _logical_lines(lines, first):
            try:
                tokens = shlex.split(text, comments=True)
            except ValueError as err:
                raise AssertionError(f"{page.name}:{number}: not a shell line ({err})") from None
            if tokens and all(_ASSIGNMENT.match(t) for t in tokens):
                for token in tokens:  # NAME="--flag ...": used as $NAME further down
                    name, _, value = token.partition("=")
                    variables[name] = shlex.split(value)
                continue
            for command in _commands_in(tokens, variables):
                if command:
                    found.append(_command(page.name, number, *command, fenced=True))
    for number, code in _inline_code(page.prose):
        try:
            tokens = shlex.split(code, comments=True)
        except ValueError:
            continue
        for command in _commands_in(tokens, {}):
            if command:
                found.append(_command(page.name, number, *command, fenced=False))
    # `lcmsm-eval ... --head lcmsm` after a full `lcmsm-eval --config C.py ...` line: the
    # config keys of the partial line are checked against C.py.
    last: dict[str, str] = {}
    for command in sorted(found, key=lambda c: c.line):
        config = _flag_value(command.args, "--config")
        if config is not None:
            last[command.prog] = config
        elif command.partial:
            command.context_config = last.get(command.prog)
    return found


def _flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.partition("=")[2]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def _command(page, line, prog, args, *, fenced) -> Command:
    args = [a for a in map(_optional, args) if a]
    partial = "..." in args
    return Command(page, line, prog, [a for a in args if a != "..."], fenced, partial)


# ----------------------------------------------------------------------------- parsers


class _Captured(BaseException):  # not an Exception: no command's handler catches it
    def __init__(self, **what):
        super().__init__()
        self.what = what


@dataclass
class Parser:
    """A command's parser, taken from its `main` without running it."""

    prog: str
    define: object = None  # absl: the command's flag definitions, as config_cli.parse gets them
    options: dict = field(default_factory=dict)  # absl: config_cli.parse's keyword arguments
    argparser: argparse.ArgumentParser | None = None

    @functools.cached_property
    def flags(self) -> dict[str, bool]:
        """Flag name -> whether it is a boolean (absl: `--name` / `--noname`)."""
        if self.argparser is not None:
            return {
                option.lstrip("-"): action.nargs == 0
                for option, action in self.argparser._option_string_actions.items()
            }
        values = flags.FlagValues()
        self.define(values)
        known = {name: isinstance(values[name], flags.BooleanFlag) for name in values}
        known["debug"] = True
        if self.options.get("takes_config", True):
            known["config"] = False
        return known

    @property
    def default_config(self) -> str | None:
        if self.argparser is not None and "--config" in self.argparser._option_string_actions:
            return self.argparser._option_string_actions["--config"].default
        return None


def _main_of(prog: str):
    if prog in SCRIPTS:
        return importlib.import_module(cli.COMMANDS[prog]).main
    path = ROOT / prog
    source = path.read_text()
    delegated = re.search(r'cli\.run\("([\w-]+)"', source)
    if delegated:
        return importlib.import_module(cli.COMMANDS[delegated.group(1)]).main
    if not re.search(r"^def main\(", source, re.M):
        module = re.search(r"^from lcmsm_jax import (\w+)$", source, re.M).group(1)
        return importlib.import_module(f"lcmsm_jax.{module}").main
    spec = importlib.util.spec_from_file_location(f"_docs_tool_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # `if __name__ == "__main__"` keeps it from running
    return module.main


@functools.cache
def parser_of(prog: str) -> Parser:
    def capture_absl(prog_, argv, define, **options):
        raise _Captured(define=define, options=options)

    def capture_argparse(self, *args, **kwargs):
        raise _Captured(argparser=self)

    main = _main_of(prog)
    with (
        mock.patch.object(config_cli, "parse", capture_absl),
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture_argparse),
    ):
        try:
            main([]) if inspect.signature(main).parameters else main()
        except _Captured as captured:
            return Parser(prog, **captured.what)
    raise AssertionError(f"{prog}: its main() returned without parsing a command line")


@functools.cache
def load_config(path: str):
    """The config an experiment file gives, loaded as the commands load it."""
    values = flags.FlagValues()
    argv = ["docs", "--config", path]
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    sys.modules.pop("config_config", None)
    with _in_root():
        values(argv)
    return values.config


@contextlib.contextmanager
def _in_root():
    before = os.getcwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(before)


_PLACEHOLDER = re.compile(r"<[^<>]*>|\$|^[A-Z][A-Z0-9_]*(\.[a-z]+)?$")


def check(command: Command) -> list[str]:
    """What is wrong with a command line, one message per problem."""
    parser = parser_of(command.prog)
    known, problems, overrides, placeholder = parser.flags, [], [], False
    config = command.context_config or parser.default_config
    args = command.args
    i = 0
    while i < len(args):
        arg, i = args[i], i + 1
        if not arg.startswith("-") or parser.argparser is not None and not arg.startswith("--"):
            if parser.argparser is None:
                problems.append(f"unexpected argument {arg!r}")
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        if name.startswith("config."):
            overrides.append(name.removeprefix("config."))
        elif parser.argparser is not None:
            key = name
            if key not in known:
                problems.append(f"{command.prog} has no flag --{name}")
        else:
            key = name if name.startswith("config") else name.replace("-", "_")
            negated = key.startswith("no") and known.get(key[2:]) is True
            if key not in known and not negated:
                problems.append(f"{command.prog} has no flag --{name}")
                continue
            if not has_value and not negated and not known[key] and i < len(args):
                value, i = args[i], i + 1
        if name == "config":
            config = value or (args[i] if i < len(args) else None)
        placeholder |= bool(_PLACEHOLDER.search(value))
    if parser.argparser is not None:
        placeholder |= any(_PLACEHOLDER.search(a) for a in args if not a.startswith("-"))
    literal_config = config is not None and (ROOT / config.split(":")[0]).is_file()
    if config is not None and not literal_config and not _PLACEHOLDER.search(config):
        problems.append(f"--config {config}: no such file")
    if literal_config:
        loaded = load_config(config)
        for key in overrides:
            node = loaded
            for part in key.split("."):
                if not isinstance(node, (config_dict.ConfigDict, dict)) or part not in node:
                    problems.append(f"--config.{key}: {config} has no field {part!r} there")
                    break
                node = node[part]
    whole = command.fenced and not command.partial and not placeholder and not problems
    if whole and (literal_config or not parser.options.get("takes_config", True)):
        problems += _parse_whole(parser, command.args)
    return problems


def _parse_whole(parser: Parser, args: list[str]) -> list[str]:
    """The command's own parser on the whole command line: values and required flags too."""
    with _in_root():
        if parser.argparser is not None:

            def error(message):
                raise config_cli.UsageError(f"{parser.prog}: {message}")

            with mock.patch.object(parser.argparser, "error", error):
                try:
                    _, rest = parser.argparser.parse_known_args(args)
                except config_cli.UsageError as err:
                    return [str(err)]
            return [f"unexpected argument {a!r}" for a in rest if not a.startswith("--config.")]
        try:
            _REAL_PARSE(parser.prog, args, parser.define, **parser.options)
        except config_cli.UsageError as err:
            return [str(err)]
    return []


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_command_lines_are_accepted(path):
    problems = [f"{c.where}: {p}" for c in commands(path) for p in check(c)]
    assert not problems, "\n".join(problems)


def test_commands_are_found():
    # The extraction itself: every kind of command line above is met in the pages.
    found = [c for path in PAGES for c in commands(path)]
    progs = {c.prog for c in found}
    assert SCRIPTS <= progs, sorted(SCRIPTS - progs)
    assert {"tools/ladder.py", "tools/paper_plan.py", "tools/prepare_tfds.py"} <= progs
    whole = [c for c in found if c.fenced and not c.partial]
    assert len(found) >= 60 and len(whole) >= 25, (len(found), len(whole))


def test_a_wrong_flag_or_key_is_named():
    def problems(line):
        return check(_command("page.md", 1, line[0], line[1:], fenced=True))

    assert problems(["lcmsm-train", "--config", "configs/demo.py", "--workdir", "w"]) == []
    assert problems(["lcmsm-train", "--config", "configs/demo.py", "--wrkdir", "w"]) == [
        "lcmsm-train has no flag --wrkdir",
        "unexpected argument 'w'",
    ]
    (message,) = problems(["lcmsm-eval", "--config", "configs/demo.py", "--config.data.nope=1"])
    assert message.startswith("--config.data.nope: configs/demo.py has no field 'nope'")
    (message,) = problems(["lcmsm-prepare", "--dataset", "gta5", "--root", "r", "--skip-bad=2"])
    assert "skip_bad" in message  # the whole line through the command's parser: a bad value
    (message,) = problems(["tools/paper_plan.py", "--limit-gb", "x"])
    assert "--limit-gb" in message


def test_readme_installs_and_tests_as_ci_does():
    # .ci/run is the README's set-up and test command, run in a fresh environment.
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    readme = [line for _, _, lines in read_page(ROOT / "README.md").blocks for line in lines]
    install = next(line for line in ci if line.startswith("pip install"))
    extras = install.rsplit(" ", 1)[1]  # ".[test,pinned]"
    assert any(f"pip install -e {extras}" in line for line in readme), install
    test = next(line for line in ci if line.startswith("pytest"))
    assert test in readme, f".ci/run runs `{test}`; the README's test command must be the same"
