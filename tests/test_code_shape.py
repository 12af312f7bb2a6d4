"""The library's shape: lint clean, small functions and classes, sub-packages layered along the data flow
(no import cycles), no pickle, a public API that exists."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import adainfer_lib as ai

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "adainfer_lib"
#: Sub-packages in data-flow order: each may import only from itself and the ones before it.
LAYERS = ("common", "model", "data", "features", "rules", "runner", "certification", "generation", "evaluation",
          "figures", "course")
MAX_FUNCTION_LINES, MAX_CLASS_LINES = 80, 250


def library_files() -> list[Path]:
    return sorted(LIB.rglob("*.py"))


def test_ruff_passes():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    out = subprocess.run([ruff, "check", "adainfer_lib", "tests", "tools", "benchmarks", "notebooks/solutions"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_functions_and_classes_are_small():
    too_long = []
    for path in library_files():
        for node in ast.walk(ast.parse(path.read_text())):
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines > {limit})")
    assert not too_long, "\n".join(too_long)


def _imported_layers(path: Path) -> set[str]:
    """The sub-packages a library file imports from (relative imports, at any depth in the file)."""
    package = path.parent.name
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level == 1:
                found.add(package)
            elif node.module:
                found.add(node.module.split(".")[0])
    return found - {"adainfer_lib", ""}


def test_sub_packages_follow_the_data_flow():
    assert {p.name for p in LIB.iterdir() if (p / "__init__.py").exists()} == set(LAYERS)
    wrong = []
    for path in library_files():
        if path.parent == LIB:
            continue
        here = LAYERS.index(path.parent.name)
        for layer in _imported_layers(path):
            if layer in LAYERS and LAYERS.index(layer) > here:
                wrong.append(f"{path.relative_to(ROOT)} imports from {layer} (after {path.parent.name})")
    assert not wrong, "\n".join(wrong)


def test_no_pickle_in_the_library():
    users = [str(p.relative_to(ROOT)) for p in library_files()
             if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "pickle" in ast.unparse(n)
                    for n in ast.walk(ast.parse(p.read_text())))]
    assert not users, users


@pytest.mark.parametrize("package", ["adainfer_lib", *[f"adainfer_lib.{layer}" for layer in LAYERS]])
def test_public_names_exist(package):
    import importlib

    module = importlib.import_module(package)
    assert module.__all__ and [n for n in module.__all__ if not hasattr(module, n)] == []


def test_top_level_names_are_not_shadowed_by_modules():
    """``ai.evaluate`` is the function, ``ai.trace`` the function: no sub-module takes their name."""
    assert callable(ai.evaluate) and callable(ai.trace) and callable(ai.trace_task)
