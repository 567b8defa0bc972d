"""The project's own import graph: no import circles, no private names used across modules.

Every module under ``dgh_deploy/``, ``targets/`` (installed as ``dgh_deploy.targets``) and
``models/`` (installed as ``dgh_deploy.models``) is parsed, not imported: the graph has the
imports at module level, in functions and under ``TYPE_CHECKING`` alike, relative ones resolved.
A lazy import inside a function does not make a circle acceptable: the layers are wrong.

An edge goes to the module a name comes from: ``from pkg import sub`` (a submodule) goes to
``pkg.sub``, ``from pkg import name`` (defined in ``pkg/__init__.py``) to ``pkg``. A module that
imports a package it is part of (``from dgh_deploy import __version__`` in a submodule) gets
that package's ``__init__`` already run, or running: such an edge makes a circle only when the
``__init__`` imports the module back at module level (a real partially-initialised import).
"""

from __future__ import annotations

import ast
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Where each installed package's sources live (pyproject's package-dir).
ROOTS = {"dgh_deploy": REPO / "dgh_deploy", "dgh_deploy.targets": REPO / "targets",
         "dgh_deploy.models": REPO / "models"}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a project module
    names: tuple[str, ...]  # ``from target import names``; () for ``import target``
    line: int
    deferred: bool  # inside a function or under TYPE_CHECKING: not run when the module is imported


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    base: Path  # paths are reported relative to it

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def where(self) -> str:
        return str(self.path.relative_to(self.base))


def project_modules(roots: dict[str, Path]) -> dict[str, Module]:
    """Every module of the packages in ``roots`` (package name -> its source folder)."""
    base = Path(os.path.commonpath([r.parent for r in roots.values()]))
    modules: dict[str, Module] = {}
    for root_name, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([root_name, *parts])
            modules[name] = Module(name, path, base)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _raw_imports(nodes: Iterable[ast.AST], deferred: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement under ``nodes``, with whether it is deferred (in a function body or
    a TYPE_CHECKING block: not run when the module is imported)."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, deferred
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _raw_imports(ast.iter_child_nodes(node), True)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _raw_imports(node.body, True)
            yield from _raw_imports(node.orelse, deferred)
        else:
            yield from _raw_imports(ast.iter_child_nodes(node), deferred)


def imports_of(module: Module, modules: dict[str, Module]) -> list[Import]:
    """The module's imports of project modules, one per target module."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
    found: list[Import] = []
    for node, deferred in _raw_imports([tree]):
        if isinstance(node, ast.Import):
            found += [Import(module.name, alias.name, (), node.lineno, deferred)
                      for alias in node.names if alias.name in modules]
            continue
        base = node.module or ""
        if node.level:
            package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([base] if base else [])])
        by_target: dict[str, list[str]] = {}
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            target = sub if sub in modules else base if base in modules else None
            if target is not None:
                by_target.setdefault(target, []).append(alias.name)
        found += [Import(module.name, t, tuple(names), node.lineno, deferred) for t, names in by_target.items()]
    return found


def all_imports(roots: dict[str, Path]) -> tuple[dict[str, Module], list[Import]]:
    modules = project_modules(roots)
    return modules, [imp for m in modules.values() for imp in imports_of(m, modules)]


def _is_ancestor(package: str, module: str) -> bool:
    """``module`` is part of ``package`` (its ``__init__`` runs first)."""
    return module.startswith(package + ".")


def _within(package: str, module: str) -> bool:
    return module == package or _is_ancestor(package, module)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _graph(edges: list[Import]) -> dict[str, dict[str, Import]]:
    graph: dict[str, dict[str, Import]] = {}
    for e in edges:
        if e.importer != e.target:
            graph.setdefault(e.importer, {}).setdefault(e.target, e)
    return graph


def _path(graph: dict[str, dict[str, Import]], start: str, goal: str) -> list[Import] | None:
    """The shortest chain of imports from ``start`` to ``goal`` (breadth first), or None."""
    came: dict[str, Import | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt, edge in sorted(graph.get(node, {}).items()):
            if nxt == goal:
                chain = [edge]
                while (prev := came[edge.importer]) is not None:
                    chain.append(prev)
                    edge = prev
                return chain[::-1]
            if nxt not in came:
                came[nxt] = edge
                queue.append(nxt)
    return None


def _strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module: each holds a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(chain: list[Import], modules: dict[str, Module]) -> str:
    steps = [f"{e.importer} ({modules[e.importer].where}:{e.line}{', deferred' if e.deferred else ''})"
             for e in chain]
    return " -> ".join([*steps, chain[0].importer])


def import_cycles(roots: dict[str, Path]) -> list[str]:
    """Each import circle, as the chain of imports that closes it (one per set of modules that
    import each other, with the whole set when it holds more than that circle)."""
    modules, edges = all_imports(roots)
    # Every import, except a module's import of a package it is part of (its __init__ has run).
    strict = _graph([e for e in edges if not _is_ancestor(e.target, e.importer)])
    cycles = []
    for component in _strongly_connected(strict):
        head = component[0]
        chain = _path(strict, head, head)
        assert chain is not None
        more = f" (all of {', '.join(component)} import each other)" if len(component) > len(chain) else ""
        cycles.append(_describe(chain, modules) + more)
    # A module-level import of a package the module is part of, while that package's __init__
    # imports the module at module level: the import sees the package half-initialised.
    runtime = _graph([e for e in edges if not e.deferred and not _is_ancestor(e.target, e.importer)])
    for e in edges:
        if not e.deferred and _is_ancestor(e.target, e.importer):
            back = _path(runtime, e.target, e.importer)
            if back is not None:
                cycles.append(_describe([e, *back], modules))
    return cycles


def private_imports(roots: dict[str, Path]) -> list[str]:
    """Imports of another module's private names: ``from x import _y``; and imports of a private
    module (``x._m``, ``from x import _m``) from outside its package ``x``, whose own it is."""
    modules, edges = all_imports(roots)
    found = []
    for e in edges:
        where = f"{modules[e.importer].where}:{e.line}"
        for name in e.names:
            if _private(name) and not e.target.endswith("." + name) and e.target != e.importer:
                found.append(f"{where}: {e.importer} imports {name} from {e.target}")
        parts = e.target.split(".")
        for k in range(1, len(parts)):
            package = ".".join(parts[:k])
            if _private(parts[k]) and not _within(package, e.importer):
                found.append(f"{where}: {e.importer} imports {e.target}, private to {package}")
                break
    return found


def test_the_scan_sees_the_project() -> None:
    """The graph is built from the real tree: known modules and edges are there."""
    modules, edges = all_imports(ROOTS)
    assert {"dgh_deploy.generation.engine", "dgh_deploy.targets", "dgh_deploy.models"} <= set(modules)
    pairs = {(e.importer, e.target) for e in edges}
    assert ("dgh_deploy.generation.distributed", "dgh_deploy.generation.engine") in pairs
    assert ("dgh_deploy.generation.engine", "dgh_deploy.generation.draws") in pairs  # from pkg import submodule


def test_no_import_cycles() -> None:
    cycles = import_cycles(ROOTS)
    assert not cycles, "import circles between the project's modules:\n" + "\n".join(cycles)


def test_no_private_names_imported_across_modules() -> None:
    found = private_imports(ROOTS)
    assert not found, "private names imported from other modules:\n" + "\n".join(found)


def upward_calibration_imports(roots: dict[str, Path]) -> list[str]:
    """Imports in ``dgh_deploy.calibration`` of generation or of the package root, both above it."""
    modules, edges = all_imports(roots)
    return [f"{modules[e.importer].where}:{e.line}: {e.importer} imports {e.target}" for e in edges
            if _within("dgh_deploy.calibration", e.importer)
            and (e.target == "dgh_deploy" or _within("dgh_deploy.generation", e.target))]


def test_calibration_sits_below_generation() -> None:
    """Calibration sets feed every target; generation makes them and the package root runs the
    whole job: calibration imports neither (the cache's caller passes the recipe and version)."""
    found = upward_calibration_imports(ROOTS)
    assert not found, "calibration imports from above it:\n" + "\n".join(found)


def cross_target_imports(roots: dict[str, Path], targets: str = "dgh_deploy.targets") -> list[str]:
    """Imports in one target folder (a subpackage of ``targets``) of another's modules. The package
    itself (the registry) and its modules beside the folders (``base``) are what targets share."""
    modules, edges = all_imports(roots)
    depth = len(targets.split(".")) + 1

    def folder(name: str) -> str | None:
        top = ".".join(name.split(".")[:depth])
        if not _is_ancestor(targets, name) or top not in modules or not modules[top].is_package:
            return None
        return top

    return [f"{modules[e.importer].where}:{e.line}: {e.importer} imports {e.target}" for e in edges
            if folder(e.importer) is not None and folder(e.target) not in (None, folder(e.importer))]


def test_no_target_imports_another() -> None:
    """A target that builds on another's file (ethos-u on tflite-int8's) gets that target from the
    registry by name and holds it: a change inside one target folder cannot break another."""
    found = cross_target_imports(ROOTS)
    assert not found, "target folders importing other target folders:\n" + "\n".join(found)


def _tree(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {"pkg": root / "pkg"}


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """On a made-up package: a circle closed by a lazy import, and one through TYPE_CHECKING, are
    found; a submodule using its package's __init__ is not a circle unless the __init__ imports it
    back at module level; private names and modules count across modules only."""
    roots = _tree(tmp_path, {
        "__init__.py": "from pkg.low import VALUE\n\ndef lazy():\n    from pkg import top\n",
        "low.py": "VALUE = 1\nfrom pkg import VALUE as again\n",  # __init__ -> low -> __init__: real
        "top.py": "import pkg\nfrom . import mid\n",  # top -> __init__ (no real circle: lazy back)
        "mid.py": "def f():\n    from .top import mid\n",  # mid -> top -> mid, in a function
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",
        "b.py": "from pkg.a import _hidden\nB = 1\n",
        "sub/__init__.py": "from pkg.sub import _impl\n",  # its own private module: fine
        "sub/_impl.py": "X = 1\n",
        "c.py": "from pkg.sub._impl import X\nfrom pkg.sub import _impl\nimport pkg.sub._impl\n",
    })
    cycles = import_cycles(roots)
    assert len(cycles) == 3, cycles
    assert any(c.startswith("pkg.a (pkg/a.py:3, deferred) -> pkg.b (pkg/b.py:1) -> pkg.a") for c in cycles)
    assert any(c.startswith("pkg.mid (pkg/mid.py:2, deferred) -> pkg.top (pkg/top.py:2) -> pkg.mid") for c in cycles)
    assert any(c.startswith("pkg.low (pkg/low.py:2) -> pkg (pkg/__init__.py:1) -> pkg.low") for c in cycles)
    private = private_imports(roots)
    assert [p.split(":")[0:2] for p in private] == [["pkg/b.py", "1"]] + [["pkg/c.py", str(n)] for n in (1, 2, 3)]


def test_the_target_check_catches_a_cross_import(tmp_path: Path) -> None:
    """On a made-up package of targets: an import of another folder is found, at module level or in a
    function, relative or absolute; the registry, the shared module and a folder's own modules are not."""
    roots = _tree(tmp_path, {
        "__init__.py": "def get_target():\n    pass\n",
        "base.py": "X = 1\n",
        "a/__init__.py": "from pkg import get_target\nfrom pkg.base import X\nfrom pkg.a import own\n",
        "a/own.py": "def f():\n    from pkg.b.t import Y\n",
        "b/__init__.py": "",
        "b/t.py": "from ..a import own\nY = 1\n",
    })
    found = cross_target_imports(roots, "pkg")
    assert [f.split(": ")[0] for f in found] == ["pkg/a/own.py:2", "pkg/b/t.py:1"], found
