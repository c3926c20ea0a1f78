"""The package's layers: each subpackage imports only the layers below it, and no
module imports itself back through others, counting imports inside functions.

Imports under ``if TYPE_CHECKING:`` are annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "mlx_align"

# Lowest first. The "L1" group (data, losses, rewards, model) is
# ordered too: a loss reads no data file, a reward uses the advantages'
# statistics, and the model layer tokenises nothing but reads data errors.
LAYERS = [
    "core",
    "data",
    "losses",
    "rewards",
    "model",
    "batches",
    "sampling",
    "config",
    "train",
    "stages",
    "apps",
    "cli",
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package modules ``source`` imports, those inside functions too."""
    tree = ast.parse(source)
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = package[: len(package) - node.level + 1] if node.level else []
            parent = ".".join(base + ([node.module] if node.module else []))
            names = [f"{parent}.{a.name}" for a in node.names] + [parent]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(
    root: Path, sources: dict[str, str] | None = None
) -> dict[str, set[str]]:
    """{module: modules it imports}; ``sources`` adds or replaces modules' text (for tests)."""
    texts = {
        module_name(p, root): (p.read_text(), p.name == "__init__.py")
        for p in root.rglob("*.py")
    }
    for name, text in (sources or {}).items():
        texts[name] = (text, False)
    known = set(texts)
    return {m: imports(t, m, pkg, known) for m, (t, pkg) in texts.items()}


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else len(LAYERS)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module in a higher layer (a package's own children aside)."""
    return sorted(
        f"{m} -> {d}"
        for m, deps in graph.items()
        for d in deps
        if layer_of(d) > layer_of(m) and not d.startswith(m + ".")
    )


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w.startswith(v + "."):  # a package importing its children
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_lives_in_a_layer():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "cli.py"]
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert packages == sorted(LAYERS[:-1])


def test_no_layer_imports_a_layer_above_it():
    assert upward_imports(import_graph(PACKAGE)) == []


def test_no_import_circles():
    assert circles(import_graph(PACKAGE)) == []


def test_the_checks_catch_an_upward_import_and_a_circle():
    """A data module importing a stage inside a function is caught twice: it points
    up, and it closes a circle (the stage imports data)."""
    sneaky = "def load():\n    from mlx_align.stages.dpo import run_dpo\n"
    graph = import_graph(PACKAGE, {"mlx_align.data.sneaky": sneaky})
    graph["mlx_align.data.jsonl"].add("mlx_align.data.sneaky")
    assert upward_imports(graph) == ["mlx_align.data.sneaky -> mlx_align.stages.dpo"]
    assert any("mlx_align.data.sneaky" in c for c in circles(graph))
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mlx_align.stages.dpo import run_dpo\n"  # fmt: skip
    assert upward_imports(import_graph(PACKAGE, {"mlx_align.data.typed": typed})) == []
