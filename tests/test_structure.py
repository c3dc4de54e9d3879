"""The code's structure, checked: the dependency rule of core, no import cycles, no lazy imports of
our own modules, short functions, and a clean ruff (docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
COMMAND_LINES = {"core/train.py", "core/sweep.py"}  # a CLI may import late, for its start-up time
MAX_FUNCTION_LINES = 80


def test_the_layers_of_core_hold(monkeypatch):
    """import-linter's contracts in pyproject.toml: core is layered and never imports the web app."""
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename="pyproject.toml", no_cache=True, no_logo=True) == 0


def find_cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import cycle among core's modules, or None. A package's own `__init__` importing its
    submodules (to export their names) is not an edge back up."""
    def imports(module: str) -> set[str]:
        return {m for m in graph.find_modules_directly_imported_by(module)
                if m.startswith("core") and not module.startswith(m + ".")}

    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(imports(module)):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph.modules):
        if module.startswith("core") and module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_module_of_core_is_in_an_import_cycle():
    assert find_cycle(grimp.build_graph("core")) is None


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for module in ("core.a", "core.b", "core.c"):
        graph.add_module(module)
    graph.add_import(importer="core.a", imported="core.b")
    graph.add_import(importer="core.b", imported="core.c")
    assert find_cycle(graph) is None
    graph.add_import(importer="core.c", imported="core.a")
    assert find_cycle(graph) == ["core.a", "core.b", "core.c", "core.a"]


def lazy_project_imports(source: str) -> list[int]:
    """Lines of imports of our own modules (core, ui) inside a function or class body."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for inner in ast.walk(node):
                names = [inner.module or ""] if isinstance(inner, ast.ImportFrom) else (
                    [a.name for a in inner.names] if isinstance(inner, ast.Import) else [])
                if any(n.split(".")[0] in ("core", "ui") for n in names):
                    lines.append(inner.lineno)
    return sorted(set(lines))


def test_core_imports_its_own_modules_at_the_top():
    found = {str(p.relative_to(ROOT)): lines for p in CORE.rglob("*.py")
             if str(p.relative_to(ROOT)) not in COMMAND_LINES and (lines := lazy_project_imports(p.read_text()))}
    assert found == {}
    assert lazy_project_imports("def f():\n    from core.models import build_model\n") == [2]


def function_lengths(source: str) -> list[tuple[int, str]]:
    return [(n.end_lineno - n.lineno + 1, n.name) for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_in_core_needs_scrolling():
    longest = max((length, f"{p.relative_to(ROOT)}: {name}") for p in CORE.rglob("*.py")
                  for length, name in function_lengths(p.read_text()))
    assert longest[0] <= MAX_FUNCTION_LINES, longest


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readme_is_for_users_and_ci_runs_its_commands():
    """A user's README: short, the install and run commands in its first screen; CI installs and tests
    exactly as its Test section says, and the app's requirements hold no development tool."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    first_screen = "\n".join(readme.splitlines()[:15])
    assert "pip install -r requirements.txt -c constraints.txt" in first_screen and "streamlit run app.py" in first_screen
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -r requirements-dev.txt -c constraints.txt" in readme and ci.count(
        "pip install -r requirements-dev.txt -c constraints.txt") == 1
    assert ci.rstrip().endswith("pytest") and "\npytest " in readme
    app = (ROOT / "requirements.txt").read_text()
    assert not {"pytest", "playwright", "ruff", "import-linter", "ray"} & {
        line.split(">")[0].split("=")[0].strip() for line in app.splitlines() if line and not line.startswith("#")}
