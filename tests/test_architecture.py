"""The layout's rules, read from the source (ast): no import cycle, `app/` never imports `worker/`, no god-files in
`worker/`, a recipe that reads as the spec's steps, and a job config read through its model only."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "worker")
MAX_WORKER_LINES = 350
MAX_RECIPE_LINES = 40
CONFIG_MODEL = ROOT / "app" / "training_config.py"


def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package by its own name, from its __init__.py)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """The project modules `name` imports, anywhere in it (module level, in functions, under TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a import b` imports the module a.b when there is one, else a name from a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            # `import a.b.c` of a module that is not ours (or a name in one): the nearest module of ours above it.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target, node.lineno


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {target for target, _ in imports(name, path, known)} for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a list of its modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_is_read() -> None:
    edges = graph()
    assert "worker.protocol" in edges["worker.loop"] and "app.models" in edges["worker.protocol"]
    assert "worker.recipe" in edges["worker.child"]  # imported inside a function: it counts


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_app_never_imports_worker() -> None:
    known = modules()
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for name, path in known.items()
        if name.split(".")[0] == "app"
        for target, line in imports(name, path, known)
        if target.split(".")[0] == "worker"
    ]
    assert offending == []


def test_no_module_in_worker_is_a_god_file() -> None:
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
        for path in (ROOT / "worker").rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_WORKER_LINES} == {}


def test_the_recipe_is_a_short_list_of_the_spec_steps_in_order() -> None:
    tree = ast.parse((ROOT / "worker" / "recipe.py").read_text())
    recipe = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "LoraRecipe")
    run = next(node for node in recipe.body if isinstance(node, ast.FunctionDef) and node.name == "run")
    assert run.end_lineno is not None and run.end_lineno - run.lineno + 1 < MAX_RECIPE_LINES
    called = [
        node.func.attr
        for node in ast.walk(run)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "self"
    ]
    steps = ["load_model", "attach_lora", "prepare_data", "baseline", "train", "save", "evaluate", "export", "gates"]
    assert [name for name in called if name in steps] == steps


def test_the_job_config_is_read_through_its_model_only() -> None:
    """A job's config is a TrainingConfig (job.training_config); string keys would bypass its validation."""
    offending = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in modules().values()
        if path != CONFIG_MODEL
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if 'config["' in line or ".config.get(" in line
    ]
    assert offending == []
