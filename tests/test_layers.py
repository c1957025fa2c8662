"""The package's layer map (its docstring) is true: no upward import, no cycle within a layer, every unit placed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import megatron_truncdistill

PACKAGE = Path(megatron_truncdistill.__file__).parent
OUTSIDE = ("tools", "tests", "benchmarks", "examples")


def _layer_map() -> dict[str, int]:
    layers = {}
    for line in megatron_truncdistill.__doc__.splitlines():
        match = re.match(r"\s+(\d+) .+? {2,}([\w, ]+)$", line)
        if match:
            layers.update({unit.strip(): int(match.group(1)) for unit in match.group(2).split(",")})
    return layers


def _unit(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """Units of this package that ``path`` imports (module level or inside functions), and outside folders."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "megatron_truncdistill" and len(parts) > 1:
                found.add(parts[1])
            elif parts[0] in OUTSIDE:
                found.add(parts[0])
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        unit = _unit(path)
        graph.setdefault(unit, set()).update(_imports(path) - {unit})
    return graph


def test_every_unit_is_placed_in_the_layer_map():
    layers, graph = _layer_map(), _graph()
    assert layers, "the package docstring lost its layer map"
    assert sorted(set(graph) - set(layers)) == [], "place these in megatron_truncdistill/__init__.py's layer map"
    assert sorted(set(layers) - set(graph)) == [], "the layer map names units that do not exist"


def test_no_upward_imports_and_nothing_from_outside_the_package():
    layers, graph = _layer_map(), _graph()
    bad = [f"{src} (layer {layers[src]}) imports {dst} ({'outside the package' if dst in OUTSIDE else 'layer %d' % layers[dst]})"
           for src, targets in graph.items() for dst in targets
           if dst in OUTSIDE or layers.get(dst, 0) > layers.get(src, 0)]
    assert bad == []


def test_imports_within_a_layer_form_no_cycle():
    layers, graph = _layer_map(), _graph()
    same = {u: {v for v in graph[u] if layers.get(v) == layers.get(u)} for u in graph}
    state: dict[str, str] = {}

    def visit(unit: str, path: list[str]) -> None:
        state[unit] = "open"
        for nxt in same[unit]:
            assert state.get(nxt) != "open", f"import cycle within a layer: {' -> '.join(path + [unit, nxt])}"
            if nxt not in state:
                visit(nxt, path + [unit])
        state[unit] = "done"

    for unit in same:
        if unit not in state:
            visit(unit, [])
