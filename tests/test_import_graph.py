"""The packages import each other without a loop, counting imports inside functions too (an
import moved into a function to dodge a loop is still a loop), and ``sweeps/`` keeps the two
rules of its layout (README, Layout):

* across its sub-packages a module imports only the other sub-package itself, and only names
  that package's ``__init__`` exports (``__all__``): a private module (``_x.py``) and any module
  of another sub-package is reached through its package, never directly;
* the sub-packages depend one way, in :data:`ORDER`; an import against it is allowed only under
  ``if TYPE_CHECKING:`` (a type annotation, not a runtime dependency).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stability", "sweeps", "mlflow_setup")
ORDER = ("common", "spec", "store", "tracking", "worker", "results", "driver", "cli")
"""sweeps/'s sub-packages, bottom first: each may import only those before it."""


def _modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    mods = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


@dataclass(frozen=True)
class Edge:
    """One import statement: ``from module import names`` (names None for ``import module``)."""

    module: str
    names: tuple[str, ...] | None
    line: int
    type_checking: bool


def _edges(name: str, path: Path) -> list[Edge]:
    """Every import of ``name`` (at the top, in a function, under TYPE_CHECKING), absolute."""
    edges: list[Edge] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for inner in child.body:
                    visit(ast.Module(body=[inner], type_ignores=[]), True)
                for inner in child.orelse:
                    visit(ast.Module(body=[inner], type_ignores=[]), type_checking)
                continue
            if isinstance(child, ast.Import):
                edges.extend(Edge(alias.name, None, child.lineno, type_checking)
                             for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = name.split(".")
                    if path.name != "__init__.py":
                        parts = parts[:-1]
                    parts = parts[:len(parts) - child.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                edges.append(Edge(base, tuple(a.name for a in child.names), child.lineno,
                                  type_checking))
            visit(child, type_checking)

    visit(ast.parse(path.read_text()), False)
    return edges


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports, at the top or in a function (not TYPE_CHECKING)."""

    def owner(dotted: str) -> str | None:
        while dotted and dotted not in mods:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found: set[str] = set()
    for edge in _edges(name, path):
        if edge.type_checking:
            continue
        # `from pkg import submodule` imports the submodule, not what pkg defines
        targets = ([edge.module] if edge.names is None else
                   [f"{edge.module}.{n}" if f"{edge.module}.{n}" in mods else edge.module
                    for n in edge.names])
        for target in targets:
            module = owner(target)
            if module is not None and module != name:
                found.add(module)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return cycles


def _sub_package(module: str, top: str = "sweeps") -> str | None:
    """``sweeps.driver.runner`` -> ``driver``; None for the top package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == top else None


def _exports(root: Path, top: str, package: str) -> set[str]:
    """The names ``top.package``'s ``__init__`` lists in ``__all__``."""
    tree = ast.parse((root / top / package / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def layout_violations(root: Path = ROOT, top: str = "sweeps",
                      order: tuple[str, ...] = ORDER) -> list[str]:
    """Imports that break the two rules in ``root/top``, one line each: ``module:line why``."""
    found = []
    for name, path in sorted(_modules(root, (top,)).items()):
        here = _sub_package(name, top)
        if here is None:
            continue  # the top package's __init__: the user's facade, above everything
        for edge in _edges(name, path):
            there = top if edge.module == top else _sub_package(edge.module, top)
            if there is None or there == here:
                continue  # outside the package, or inside its own sub-package
            where = f"{name}:{edge.line}"
            if there == top:
                found.append(f"{where} imports the top package {top}; import from a sub-package")
                continue
            package = f"{top}.{there}"
            if edge.module != package or edge.names is None:
                found.append(f"{where} imports {edge.module}, inside sub-package {there}; "
                             f"import from {package} (its __init__)")
            else:
                hidden = sorted(set(edge.names) - _exports(root, top, there))
                if hidden:
                    found.append(f"{where} imports {', '.join(hidden)} from {package}, which "
                                 f"does not export it; add it to {package}.__all__")
            if there not in order or here not in order:
                unknown = there if there not in order else here
                found.append(f"{where}: sub-package {unknown} is not in the import order")
            elif order.index(there) > order.index(here) and not edge.type_checking:
                found.append(f"{where} imports {there}, above {here} in the order "
                             f"{' <- '.join(order)}; move the code or import under "
                             f"TYPE_CHECKING")
    return found


def test_no_import_loop() -> None:
    mods = _modules()
    graph = {name: _imports(name, path, mods) for name, path in mods.items()}
    assert _cycles(graph) == []


def test_the_check_finds_a_loop() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_stability_does_not_import_sweeps() -> None:
    mods = _modules()
    for name, path in mods.items():
        if name.startswith("stability"):
            outside = {m for m in _imports(name, path, mods) if not m.startswith("stability")}
            assert not outside, name


def test_sweeps_keeps_its_layout_rules() -> None:
    assert layout_violations() == []


def test_every_sub_package_is_in_the_order() -> None:
    packages = {p.name for p in (ROOT / "sweeps").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ORDER)


def test_the_readme_states_the_order() -> None:
    assert " <- ".join(ORDER) in (ROOT / "README.md").read_text()


def _plant(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_check_finds_planted_violations(tmp_path: Path) -> None:
    _plant(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "from pkg.low._impl import f\n__all__ = ['f']\n",
        "pkg/low/_impl.py": ("from typing import TYPE_CHECKING\n"
                             "if TYPE_CHECKING:\n    from pkg.high import g\n"  # allowed
                             "def f():\n    from pkg.high import g\n    return g\n"),
        "pkg/low/other.py": "h = 1\n",
        "pkg/high/__init__.py": "from pkg.high.mod import g\n__all__ = ['g']\n",
        "pkg/high/mod.py": ("from pkg.low import f\n"              # allowed
                            "from pkg.low._impl import f as f2\n"  # a private module
                            "from pkg.low import other\n"          # not exported
                            "import pkg.low.other\n"               # a module, not the package
                            "from pkg import low\n"                # the top package
                            "def g():\n    return f\n"),
    })
    found = layout_violations(tmp_path, "pkg", ("low", "high"))
    assert [line.split(" ", 1)[0] for line in found] == [
        "pkg.high.mod:2", "pkg.high.mod:3", "pkg.high.mod:4", "pkg.high.mod:5",
        "pkg.low._impl:5"]
    assert "inside sub-package low; import from pkg.low" in found[0]
    assert "does not export it; add it to pkg.low.__all__" in found[1]
    assert "imports the top package pkg" in found[3]
    assert "above low in the order low <- high" in found[4]


def test_the_check_finds_a_sub_package_left_out_of_the_order(tmp_path: Path) -> None:
    _plant(tmp_path, {"pkg/__init__.py": "", "pkg/a/__init__.py": "x = 1\n__all__ = ['x']\n",
                      "pkg/b/__init__.py": "from pkg.a import x\n"})
    assert layout_violations(tmp_path, "pkg", ("b",)) == [
        "pkg.b:1: sub-package a is not in the import order"]
