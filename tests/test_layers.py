"""Layers point one way: data and towers, then the training kit, then methods, then the runtime.

Every ``import adamodal...`` in the package (module level or inside a function) is read with
:mod:`ast` and checked against the layer map below; the runtime may know methods only through
the contract (``adamodal.methods`` and ``adamodal.methods.base``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import adamodal

PACKAGE = Path(adamodal.__file__).parent

#: first dotted part under ``adamodal`` (or module name) -> layer; higher may import lower
LAYERS: dict[str, int] = {
    "__init__": 0, "errors": 0, "cache": 0, "devices": 0, "data": 0, "towers": 0,
    "model": 0, "transformer": 0, "metrics": 0,
    "kit": 1,
    "methods": 2,
    "runtime": 3, "flower": 3, "config": 3, "suite": 3, "ceiling": 3, "bench": 3,
    "report": 3, "cli": 3, "__main__": 3, "scenarios": 3,
}
CONTRACT = {"adamodal.methods", "adamodal.methods.base"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int:
    parts = name.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    assert head in LAYERS, f"{name}: add its top-level part {head!r} to the layer map"
    return LAYERS[head]


def adamodal_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("adamodal")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "adamodal":  # from adamodal import x: x is a submodule or __version__
                found += [(node.lineno, f"adamodal.{a.name}") if a.name != "__version__"
                          else (node.lineno, "adamodal") for a in node.names]
            elif node.module.startswith("adamodal."):
                found.append((node.lineno, node.module))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_module_imports_upward(path: Path) -> None:
    me = module_name(path)
    mine = layer_of(me)
    upward = [f"line {line}: {name} (layer {layer_of(name)})"
              for line, name in adamodal_imports(path) if layer_of(name) > mine]
    assert not upward, f"{me} (layer {mine}) imports upward: {upward}"


@pytest.mark.parametrize("path", [p for p in MODULES if layer_of(module_name(p)) == 3],
                         ids=lambda p: module_name(p))
def test_the_runtime_knows_methods_only_through_the_contract(path: Path) -> None:
    beyond = [f"line {line}: {name}" for line, name in adamodal_imports(path)
              if name.startswith("adamodal.methods") and name not in CONTRACT]
    assert not beyond, f"{module_name(path)} reaches past the method contract: {beyond}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The walk must find imports inside functions too, or the test above proves nothing."""
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from adamodal.runtime.simulator import Simulator\n")
    assert adamodal_imports(src) == [(2, "adamodal.runtime.simulator")]
