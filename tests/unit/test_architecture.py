"""The import graph points one way: each layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "activeseg"
# Lowest first; a module may import its own layer and the ones before it.
LAYERS = ("base", "core", "data", "pool", "labelstudio", "workflows", "cli")
BASE = {"errors", "config", "choices", "resources", "durable", "__init__"}


def _layer(module: str) -> str:
    """Return the layer of a dotted module name inside activeseg."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top == "__main__":  # python -m activeseg: the command line
        return "cli"
    return "base" if top in BASE else top


def _imports(path: Path) -> set[str]:
    """Return the activeseg modules a file imports (at any depth, lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("activeseg"):
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("activeseg"))
    return found


def _module(path: Path) -> str:
    return ".".join(("activeseg", *path.relative_to(PACKAGE).with_suffix("").parts))


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_known_layer() -> None:
    assert {_layer(_module(p)) for p in MODULES} <= set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    own = LAYERS.index(_layer(_module(path)))
    upward = sorted(m for m in _imports(path) if LAYERS.index(_layer(m)) > own)
    assert not upward, f"{_module(path)} imports a layer above it: {upward}"


def test_pool_never_imports_torch() -> None:
    for path in (PACKAGE / "pool").rglob("*.py"):
        assert "torch" not in {n.split(".")[0] for n in _raw_imports(path)}, path


def _raw_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names
