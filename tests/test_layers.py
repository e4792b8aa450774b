"""The import graph of ``optstate/`` follows its layers (docs/ARCHITECTURE.md).

Layers, lowest first (a module may import modules of its own layer or of a lower one):

    base < io < numeric < state < sim < {edit, analysis} < render < cli

``edit`` and ``analysis`` are siblings: neither imports the other. The top level
(``optstate/__init__.py``, ``api.py``, ``_entry.py``, ``__main__.py``) may import anything;
nothing in a layer imports the top level (the version lives in ``base/version.py``).

The graph is read from the source (``ast``): every ``import``/``from ... import`` of an
optstate module, at module level AND inside functions. A function-level import only defers
a dependency, it does not remove it, so both kinds count, for the layers and for cycles.
(``importlib.import_module`` with a literal name counts too; the CLI's computed
``import_module(f"{__name__}...")`` of its own command modules cannot be read and stays
inside ``cli``.)
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import optstate
from tests.conftest import ROOT

PACKAGE = Path(optstate.__file__).resolve().parent

RANK = {"base": 0, "io": 1, "numeric": 2, "state": 3, "sim": 4,
        "edit": 5, "analysis": 5, "render": 6, "cli": 7}
SIBLINGS = {"edit", "analysis"}  # the same rank, and neither may import the other
TOP = {"optstate", "optstate.api", "optstate._entry", "optstate.__main__"}

# Violations that exist today and are being removed (issue #17). The test asserts this set
# EQUALS the real one: a new violation fails it, and so does a fixed one still listed here.
KNOWN_VIOLATIONS: set[str] = set()


def _source_modules() -> dict[str, Path]:
    """Every optstate module with Python source: dotted name -> file."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["optstate", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _source_modules()


def _imports(name: str, path: Path) -> set[str]:
    """The optstate modules that module ``name`` imports (anywhere in its body)."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()

    def add(module: str, names: list[str]) -> None:
        if module != "optstate" and not module.startswith("optstate."):
            return
        subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
        targets.update(subs or [module])  # `from pkg import submodule` is the submodule
        if len(subs) < len(names):  # some names are attributes of the module itself
            targets.add(module)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, [])
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                base = here[:len(here) - node.level + 1]
                module = ".".join([*base, *([module] if module else [])])
            add(module, [a.name for a in node.names])
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(
                node.func, "attr", None)) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            add(node.args[0].value, [])
    targets.discard(name)
    return {t for t in targets if t in MODULES}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if module not in TOP and len(parts) > 1 and parts[1] in RANK else None


def _layer_violations() -> set[str]:
    bad = set()
    for module, targets in GRAPH.items():
        here = _layer(module)
        if module in TOP:
            continue
        assert here is not None, f"{module} is in no layer: add its package to RANK"
        for target in targets:
            there = _layer(target)
            if (there is None  # the top level
                    or RANK[there] > RANK[here]
                    or (here != there and {here, there} == SIBLINGS)):
                bad.add(f"{module} -> {target}")
    return bad


def _cycles() -> set[str]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = set()
    for start in sorted(GRAPH):
        if start in index:
            continue
        work = [(start, iter(sorted(GRAPH[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(GRAPH[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add("cycle: " + ", ".join(sorted(component)))
    return found


def test_every_module_imports():
    """Every module under optstate/ imports (the C extensions only where built), and the
    graph below covers exactly the modules the package has."""
    walked = {m.name for m in pkgutil.walk_packages(optstate.__path__, "optstate.")}
    compiled = {m for m in walked if m not in MODULES}  # _ckernels, _sigbus: built or not
    assert all(m.rsplit(".", 1)[-1].startswith("_") for m in compiled), compiled
    assert walked - compiled == set(MODULES) - {"optstate"}
    for name in sorted(walked - {"optstate.__main__"}):  # __main__ runs the command line
        importlib.import_module(name)


def test_the_graph_sees_function_level_and_relative_imports():
    """The reader is what the other tests stand on: it finds imports inside functions."""
    assert "optstate.cli" in GRAPH["optstate._entry"]  # inside _start()
    assert "optstate.io.prefetch" in GRAPH["optstate._entry"]
    assert "optstate.base.errors" in GRAPH["optstate.cli"]
    assert GRAPH["optstate.base.testhook"] <= {m for m in MODULES if _layer(m) == "base"}


def test_layers_point_down_only():
    actual = _layer_violations() | _cycles()
    assert actual == KNOWN_VIOLATIONS, (
        f"new: {sorted(actual - KNOWN_VIOLATIONS)}; "
        f"fixed (remove from KNOWN_VIOLATIONS): {sorted(KNOWN_VIOLATIONS - actual)}")


def test_the_rules_catch_what_they_should():
    """The checks themselves: an upward import, a sibling import, an import of the top
    level and a two-module cycle are each reported."""
    saved = {k: set(v) for k, v in GRAPH.items()}
    try:
        GRAPH["optstate.base.errors"].add("optstate.io.atomic")
        GRAPH["optstate.edit.convert"].add("optstate.analysis.diff")
        GRAPH["optstate.render.human"].add("optstate._entry")
        bad = _layer_violations()
        assert {"optstate.base.errors -> optstate.io.atomic",
                "optstate.edit.convert -> optstate.analysis.diff",
                "optstate.render.human -> optstate._entry"} <= bad
        GRAPH["optstate.base.suggest"].add("optstate.base.errors")
        GRAPH["optstate.base.errors"].add("optstate.base.suggest")
        assert any("optstate.base.errors" in c and "optstate.base.suggest" in c
                   for c in _cycles())
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


@pytest.mark.parametrize("module", ["optstate", "optstate.api"])
def test_import_optstate_loads_no_heavy_dependency(module):
    """``import optstate`` (and its documented API's module) imports no torch, typer, rich
    or numpy: they load when a function is called."""
    code = (f"import sys, {module}, optstate\n"
            "dir(optstate)\n"
            "print(sorted(m for m in ('torch', 'typer', 'rich', 'numpy', 'click')"
            " if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.stdout == "[]\n", r.stderr
