"""The package's layering: every module imports only from its own layer or the layers
below it (function-level imports included), and no import circle exists anywhere.

From the bottom: foundations (no package imports) <- data <- models and the shared output
helpers <- uda and inference <- checks and conversion <- train / evaluate / predict <-
ladder and benchmark <- the command-line entry points. So data never imports models or
uda, models never import uda, and training never runs the ladder.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "lcmsm_jax"

# Layer of each module or subpackage (a subpackage's entry covers its modules).
LAYERS = {
    **dict.fromkeys(
        (
            "atomic",
            "config_cli",
            "checkpoint",
            "compile_cache",
            "sharding",
            "metrics_log",
            "methods",
            "optim",
            "peers",
            "progress",
            "state_dicts",
            "storage",
            "text",
            "workdir_lock",
        ),
        0,
    ),  # fmt: skip
    "data": 1,
    **dict.fromkeys(("models", "export", "miou", "visualize"), 2),
    **dict.fromkeys(("uda", "inference", "evaluator", "restore", "clip_text"), 3),
    **dict.fromkeys(("config_checks", "convert", "torch_export"), 4),
    **dict.fromkeys(("train", "guards", "run_state", "evaluate", "predict"), 5),
    **dict.fromkeys(("ladder", "benchmark", "bench"), 6),
    **dict.fromkeys(("demo", "cli"), 7),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def package_imports(path: Path) -> set[str]:
    """The lcmsm_jax modules `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lcmsm_jax.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lcmsm_jax"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if is_module(name) else node.module)
    return found - {"lcmsm_jax"}


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): package_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package itself
        return -1
    if parts[1] not in LAYERS:
        raise KeyError(f"{module}: not in tests/test_layering.py's LAYERS; give it a layer")
    return LAYERS[parts[1]]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle [a, b, ..., a] of `graph`, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt, node]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{module} (layer {layer(module)}) imports {dep} (layer {layer(dep)})"
        for module, deps in import_graph().items()
        for dep in sorted(deps)
        if layer(dep) > layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    assert find_cycle(import_graph()) is None


def test_the_checks_catch_a_circle_and_an_upward_import():
    # The circle training <-> ladder had before lcmsm-demo existed, and one through three.
    assert find_cycle({"a.train": {"a.ladder"}, "a.ladder": {"a.train"}}) in (
        ["a.train", "a.ladder", "a.train"], ["a.ladder", "a.train", "a.ladder"]
    )  # fmt: skip
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == ["x", "y", "z", "x"]
    assert find_cycle({"x": {"y"}, "y": set(), "w": {"x", "y"}}) is None
    assert layer("lcmsm_jax.data.pipeline") < layer("lcmsm_jax.models.mit")
    assert layer("lcmsm_jax.train") < layer("lcmsm_jax.ladder")
