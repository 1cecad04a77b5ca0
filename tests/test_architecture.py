"""The layers of docs/architecture.md, checked on the source: imports point down, never in a loop.

Every ``import zsw.X`` / ``from zsw.X import`` counts, including the function-local ones (they
keep ``zsw --help`` fast, but a local import is still a dependency and can hide a loop).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder on disk -> its name in the zsw namespace (kernels/, cli/ and bench/ are mapped into it)
ROOTS = {"zsw": REPO / "zsw", "kernels": REPO / "kernels", "cli": REPO / "cli", "bench": REPO / "bench"}
# the layers, top to bottom: a unit may import units of its own or a lower layer only
LAYERS = [
    {"cli", "bench", "app"},
    {"train", "eval", "export", "synth"},
    {"infer"},
    {"model", "data", "checkpoint", "kernels"},
    {"config", "errors", "io", "locks", "listen", "hub", "report", "registry"},
]


def _unit(module: str) -> str | None:
    """``zsw.infer.grid`` -> ``infer``; ``zsw.errors`` -> ``errors``; None outside zsw."""
    parts = module.split(".")
    if parts[0] != "zsw" or len(parts) < 2:
        return None
    return parts[1]


def _is_module(name: str) -> bool:
    return name in ROOTS or (REPO / "zsw" / name).is_dir() or (REPO / "zsw" / f"{name}.py").is_file()


def _imports() -> dict[str, dict[str, set[str]]]:
    """unit -> imported unit -> the files that import it."""
    graph: dict[str, dict[str, set[str]]] = {}
    for name, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root)
            unit = name if name != "zsw" else (rel.parts[0] if len(rel.parts) > 1 else rel.stem)
            if unit in ("__init__", "__main__"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                modules = []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                    if node.module == "zsw":  # `from zsw import checkpoint`: the names that are modules
                        modules += [f"zsw.{a.name}" for a in node.names if _is_module(a.name)]
                elif isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                for m in modules:
                    target = _unit(m)
                    if target and target != unit:
                        graph.setdefault(unit, {}).setdefault(target, set()).add(str(path.relative_to(REPO)))
    return graph


def _layer(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"zsw.{unit} is in no layer of docs/architecture.md: add it to LAYERS and the doc")


def test_no_import_cycle_between_subpackages():
    graph = _imports()
    state: dict[str, str] = {}

    def visit(unit: str, path: list[str]) -> None:
        state[unit] = "open"
        for target in sorted(graph.get(unit, {})):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target] if target in path else [unit, target]
                files = graph[unit][target]
                pytest.fail(f"import cycle {' -> '.join(cycle)} (e.g. {sorted(files)[0]})")
            if target not in state:
                visit(target, [*path, target])
        state[unit] = "done"

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [unit])


def test_imports_point_down_the_layers():
    wrong = [
        f"zsw.{unit} imports zsw.{target} ({sorted(files)[0]})"
        for unit, targets in _imports().items()
        for target, files in targets.items()
        if _layer(target) < _layer(unit)
    ]
    assert not wrong, "\n".join(wrong)


def test_features_do_not_import_each_other_sideways():
    """infer/export/synth: export serves infer's Backend protocol but infer never imports export
    (zsw.registry names the runtime loaders); the VLM estimator is an inference feature."""
    graph = _imports()
    assert "export" not in graph.get("infer", {}), graph["infer"].get("export")
    assert "synth" not in graph.get("infer", {}), graph["infer"].get("synth")
    assert "infer" not in graph.get("kernels", {}) and not graph.get("kernels")  # kernels: a leaf


def test_the_layers_are_the_ones_documented():
    text = (REPO / "docs" / "architecture.md").read_text()
    for layer in LAYERS:
        for unit in layer:
            assert f"`{unit}`" in text or f"`{unit}/`" in text, f"docs/architecture.md does not place {unit}"
