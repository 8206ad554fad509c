"""The shape of the package, measured: imports flow one way between layers, no import
circle, no module over ~400 lines, MLflow imported in one module and Ray only where
sweeps run (DESIGN.md: Ray and MLflow stay out of the trainer, models, losses, data)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "slotsweep"

# Lowest first; a module may import its own layer or lower ones, never a higher one.
LAYERS = [
    {"slotsweep", "slotsweep.config", "slotsweep.config_io", "slotsweep.files",
     "slotsweep.shipped"},
    {"slotsweep.data", "slotsweep.models", "slotsweep.losses", "slotsweep.metrics"},
    {"slotsweep.training"},
    {"slotsweep.sweep"},
    {"slotsweep.reporting"},
    {"slotsweep.cli", "slotsweep.run", "slotsweep.train", "slotsweep.prepare",
     "slotsweep.report", "slotsweep.probe", "slotsweep.__main__"},
]
MAX_LINES = 400
COMMANDS = ("run", "train", "prepare", "report", "probe")  # thin: parsing and messages


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every module this file imports (at any depth: lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def internal_imports(name: str) -> set[str]:
    return {m for m in imports(MODULES[name]) if m in MODULES and m != name}


def layer(name: str) -> int:
    for index, members in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in members - {"slotsweep"}):
            return index
    assert name == "slotsweep", f"{name} belongs to no layer: add it to LAYERS"
    return 0


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


def test_no_import_runs_upward():
    upward = [f"{name} (layer {layer(name)}) imports {other} (layer {layer(other)})"
              for name in MODULES for other in internal_imports(name)
              if layer(other) > layer(name)]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    graph = graphlib.TopologicalSorter({name: internal_imports(name) for name in MODULES})
    try:
        graph.prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")


def test_no_module_over_the_limit():
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_are_thin(command):
    assert len(MODULES[f"slotsweep.{command}"].read_text().splitlines()) < 150


def test_mlflow_is_imported_in_one_module():
    users = {name for name, path in MODULES.items()
             if any(m == "mlflow" or m.startswith("mlflow.") for m in imports(path))}
    assert users == {"slotsweep.sweep.tracking"}


@pytest.mark.parametrize("library", ["ray", "mlflow", "optuna"])
def test_training_models_losses_and_data_know_no_sweep_library(library):
    lower = [name for name in MODULES if layer(name) <= layer("slotsweep.training")]
    users = [name for name in lower
             if any(m == library or m.startswith(library + ".") for m in imports(MODULES[name]))]
    assert not users, users


MAX_FUNCTION_LINES = 60


def test_no_long_function_without_its_reason():
    """A function over MAX_FUNCTION_LINES says in its docstring why it is one piece."""
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and "on purpose" not in (
                        ast.get_docstring(node) or ""):
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def test_mlflow_tag_names_are_spelled_once():
    """The tags slotsweep writes to MLflow are named in `sweep.tracking` only; the other
    modules (the report reading runs back among them) use its constants."""
    from slotsweep.sweep import tracking

    tags = {v for k, v in vars(tracking).items() if k.startswith("TAG_")}
    spelled = [f"{name}: {node.value!r}" for name, path in MODULES.items()
               if name != "slotsweep.sweep.tracking"
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Constant) and node.value in tags]
    assert not spelled, spelled
