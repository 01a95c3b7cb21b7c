"""The code's layout rules, checked on the source: the library stays below the orchestration,
every subpackage says what it is for, functions and modules stay short, and no model's kind is
read off its name."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "lesion_ml"
APP = LIBRARY / "app"  # the application edge: the CLI, benchmarks and server drive the layers below
ORCHESTRATION = ("prefect", "dvc", "tasks", "flows", "lesion_ml.app")


def _library_modules() -> list[Path]:
    return sorted(p for p in LIBRARY.rglob("*.py") if not p.is_relative_to(APP))


def _imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _command_words(tree: ast.AST) -> set[str]:
    """String constants that would name an orchestration layer on a subprocess command line."""
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value == "dvc" or re.match(r"^(flows|tasks)(\.\w+)+$", node.value):
                words.add(node.value)
    return words


def _orchestration_uses(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = {n for n in _imported(tree) if any(n == o or n.startswith(o + ".") for o in ORCHESTRATION)}
    return found | _command_words(tree)


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_library_reaches_no_orchestration_layer(path: Path) -> None:
    """Outside lesion_ml/app, no module imports prefect, dvc, tasks/, flows/ or the app edge, nor
    runs them as `python -m flows...` / `dvc ...` through a subprocess."""
    assert _orchestration_uses(path) == set()


def test_the_layer_check_sees_imports_and_command_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import subprocess\nfrom tasks.cache import cached_task\n"
                   "def f():\n    from lesion_ml.app import server\n"
                   "    subprocess.run(['python', '-m', 'flows.retrain'])\n    subprocess.run(['dvc', 'repro'])\n")
    assert _orchestration_uses(bad) == {"tasks.cache", "tasks.cache.cached_task", "lesion_ml.app",
                                        "lesion_ml.app.server", "flows.retrain", "dvc"}


def test_every_subpackage_states_its_purpose() -> None:
    packages = sorted(p.parent for p in LIBRARY.rglob("__init__.py") if p.parent != LIBRARY)
    assert {p.name for p in packages} >= {"app", "config", "data", "evaluate", "image", "model", "tabular", "tune"}
    for pkg in packages:
        doc = ast.get_docstring(ast.parse((pkg / "__init__.py").read_text()))
        assert doc and len(doc.split()) >= 8, f"{pkg.relative_to(REPO)}/__init__.py: no docstring saying what it is for"
    top = sorted(p.stem for p in LIBRARY.glob("*.py") if p.stem != "__init__")
    assert top == ["catalogue", "errors", "fingerprint", "io", "sampling"], top


def _long_parts(path: Path, max_function: int = 60, max_module: int = 400) -> list[str]:
    text = path.read_text()
    found = [f"{path.name}: {len(text.splitlines())} lines"] if len(text.splitlines()) > max_module else []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > max_function:
                found.append(f"{path.name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_functions_and_modules_stay_short() -> None:
    """No function over 60 lines and no module over 400 in lesion_ml/, tasks/ or flows/."""
    paths = [p for d in ("lesion_ml", "tasks", "flows") for p in sorted((REPO / d).rglob("*.py"))]
    assert [part for p in paths for part in _long_parts(p)] == []


def test_the_length_check_finds_a_long_function(tmp_path: Path) -> None:
    long = tmp_path / "long.py"
    long.write_text("def f():\n" + "    x = 1\n" * 61)
    assert _long_parts(long) == ["long.py:1 f: 62 lines"]


def test_no_model_kind_is_read_off_its_name() -> None:
    """Evaluate, final, predict and explain ask the catalogue (`ModelRef`) what a model is; only the
    catalogue parses names."""
    pattern = re.compile(r"""startswith\(["']cnn_["']\)|\[4:\]|__raw""")
    paths = [p for d in ("lesion_ml", "tasks", "flows") for p in sorted((REPO / d).rglob("*.py"))]
    hits = [f"{p.relative_to(REPO)}:{i}" for p in paths if p.name != "catalogue.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_the_files_make_test_hands_out_first_exist():
    """tests/conftest.py LONGEST_FIRST orders the slowest files first: a renamed file would
    silently fall back to collection order."""
    from tests.conftest import LONGEST_FIRST

    missing = [f for f in LONGEST_FIRST if not (REPO / f).is_file()]
    assert not missing and len(set(LONGEST_FIRST)) == len(LONGEST_FIRST), missing
