"""The layers of docs/architecture.md ("Layers") import one way: a lower layer never imports a higher
one (lazy imports inside functions count too), and no two modules import each other in a cycle."""

from __future__ import annotations

import ast
import pathlib

import networkx as nx

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "autoremat"

#: rank of each layer; a module may import modules of its own rank or lower
LAYERS = {
    "autoremat._torch_compat": 0,
    "autoremat._version": 0,
    "autoremat.graph": 1,
    "autoremat.cost_models": 2,
    "autoremat.passes": 3,
}
TOP = 4


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rank(module: str) -> int:
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return TOP


def _imports(path: pathlib.Path) -> list[tuple[str, bool]]:
    """(imported autoremat module, imported at module level outside ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    deferred: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or (
            isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        ):
            deferred.update(id(n) for n in ast.walk(node) if n is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autoremat"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            # `from autoremat.x import y` imports module x.y when y is a submodule, else x
            for name in names:
                is_module = (PACKAGE.parent / (name.replace(".", "/") + ".py")).exists() or (
                    PACKAGE.parent / name.replace(".", "/")
                ).is_dir()
                found.append((name if is_module else node.module, id(node) not in deferred))
        elif isinstance(node, ast.Import):
            eager = id(node) not in deferred
            found += [(a.name, eager) for a in node.names if a.name.startswith("autoremat")]
    return found


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_no_layer_imports_a_higher_one():
    upward = [
        f"{name} (layer {_rank(name)}) imports {target} (layer {_rank(target)})"
        for name, path in _modules().items()
        for target, _ in _imports(path)
        if _rank(target) > _rank(name)
    ]
    assert not upward, "\n".join(upward)


def test_cost_models_never_import_the_solvers():
    offending = [
        f"{name} imports {target}"
        for name, path in _modules().items()
        if name.startswith("autoremat.cost_models")
        for target, _ in _imports(path)
        if target.startswith("autoremat.passes")
    ]
    assert not offending, offending


def test_no_module_level_import_cycle():
    graph = nx.DiGraph()
    for name, path in _modules().items():
        graph.add_node(name)
        for target, eager in _imports(path):
            if eager and target != name:
                graph.add_edge(name, target)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, cycles


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checks above can fail: a bottom-layer file importing a solver is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from autoremat.passes.search import solve\n")
    (target, eager) = _imports(bad)[0]
    assert target == "autoremat.passes.search" and eager
    assert _rank(target) > _rank("autoremat.graph.storage")


def test_no_document_outside_the_repository_is_cited():
    cited = [str(p) for p in PACKAGE.rglob("*.py") if "DESIGN" in p.read_text()]
    assert not cited, cited
