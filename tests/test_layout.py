"""The house rules of ``trainer/``, read from its source with ``ast``: which folder may import
which, no import circle, torch-free package faces, and the size limits that keep parts readable.

The layers, lowest first. A module may import its own unit and the units of lower layers, never
a higher one, and never the other unit of its own layer:

0. the shared vocabulary at the root (errors, params, monitor, components, plan, batch_ramp, distributed, files)
1. data/, models/ (what users bring)
2. optim/ (parameter groups and the optimizer)
3. schedules/ (the LR of every update)
4. controls/ (what watches a run)
5. rundir/ (what lands on disk)
6. training/ (one update, one validation, the loop)
7. app/ (a command becomes a run)
8. the doors: __main__, api, preview, compare, sample, and the package's own face
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "trainer"
LAYERS = [
    {"errors", "params", "monitor", "components", "plan", "batch_ramp", "distributed", "files"},
    {"data", "models"},
    {"optim"},
    {"schedules"},
    {"controls"},
    {"rundir"},
    {"training"},
    {"app"},
    {"__init__", "__main__", "api", "preview", "compare", "sample"},
]
LAYER = {unit: index for index, units in enumerate(LAYERS) for unit in units}
MAX_FUNCTION_LINES = 60
MAX_LOOP_LINES = 150


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def unit_of(module: str) -> str:
    """``trainer.schedules.chain`` -> ``schedules``; ``trainer.errors`` -> ``errors``; ``trainer`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported(module: str) -> set[str]:
    """The trainer modules ``module`` imports, at its top or inside a function (a lazy import is
    still a dependency): ``from trainer.x import y`` counts as ``trainer.x.y`` when that is a module."""
    path = MODULES[module]
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: imported(module) for module in MODULES}


def test_the_graph_is_read():
    assert len(MODULES) > 60 and "trainer.training.loop" in GRAPH["trainer.app.build"]
    assert "trainer.schedules.registry" in GRAPH["trainer.schedules.formulas"]
    assert set(LAYER) == {unit_of(module) for module in MODULES}  # every folder and root module has its layer


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer_or_a_sibling_unit(module):
    unit = unit_of(module)
    for other in GRAPH[module]:
        target = unit_of(other)
        if target == unit or LAYER[unit] == 0 and LAYER[target] == 0:  # the vocabulary uses itself
            continue
        assert LAYER[target] < LAYER[unit], f"{module} imports {other}: {unit}/ may not import {target}/"


def test_the_import_graph_has_no_circle():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(GRAPH[module]):
            if state.get(other) == "open":
                circle = path[path.index(other):] + [other]
                pytest.fail("import circle: " + " -> ".join(circle))
            if other not in state:
                visit(other, [*path, other])
        state[module] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])


def test_package_faces_import_no_torch():
    """Hydra imports these for every command, ``--help`` included."""
    faces = ["trainer", "trainer.rundir", "trainer.schedules", "trainer.compare", "trainer.preview", "trainer.app.cli"]
    code = f"import sys\nfor m in {faces}: __import__(m)\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def lengths(kind: type) -> list[tuple[str, int]]:
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, kind):
                found.append((f"{module}.{node.name}", node.end_lineno - node.lineno + 1))
    return found


def test_no_function_is_over_60_lines():
    functions = lengths(ast.FunctionDef)
    assert len(functions) > 300
    assert [(name, n) for name, n in functions if n > MAX_FUNCTION_LINES] == []


def test_the_loop_is_under_150_lines():
    (loop,) = [n for name, n in lengths(ast.ClassDef) if name == "trainer.training.loop.Loop"]
    assert loop < MAX_LOOP_LINES
