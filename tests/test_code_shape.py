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
LAYERS = ("common", "model", "data", "features", "readers", "rules", "runner", "certification", "generation",
          "evaluation", "figures", "course")
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


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_imports(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The library modules ``path`` imports, at any depth in the file (lazy imports inside functions count:
    they close a circle as surely as top-level ones). ``from package import name`` counts the sub-module
    ``package.name`` when there is one, else the package."""
    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != here}


def import_cycles(files: list[Path], root: Path = ROOT) -> list[list[str]]:
    """Circles of imports between library modules (Tarjan's strongly connected components of the import
    graph). Package ``__init__`` files are left out: they only re-export their modules, and the layering test
    above already orders the packages."""
    modules = {_module_name(p, root) for p in files}
    graph = {_module_name(p, root): _module_imports(p, root, modules) for p in files if p.name != "__init__.py"}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles_between_modules():
    """Inside a package too: two modules that import each other (even lazily, inside a function) are one
    module's job split in two, or a private detail reached across a module boundary."""
    assert import_cycles(library_files()) == []


def test_import_cycle_finder_sees_a_lazy_circle(tmp_path):
    pkg = tmp_path / "adainfer_lib" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from .a import f\n    return f\n")
    (pkg / "c.py").write_text("from . import a\n")
    files = sorted((tmp_path / "adainfer_lib").rglob("*.py"))
    assert import_cycles(files, tmp_path) == [["adainfer_lib.pkg.a", "adainfer_lib.pkg.b"]]
