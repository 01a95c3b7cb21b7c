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
    assert top == ["artefacts", "catalogue", "errors", "fingerprint", "io", "sampling"], top


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


# -- the artefact catalogue (lesion_ml/artefacts.py) -------------------------------------------
CODE_DIRS = ("lesion_ml", "tasks", "flows")
CATALOGUE = LIBRARY / "artefacts.py"
# The file names of the stage graph that only the catalogue spells, docstrings and comments
# included: name -> pattern ("fold{}": any per-fold name built by an f-string).
CATALOGUED_NAMES = {"oof.parquet": r"oof\.parquet", "clean.parquet": r"clean\.parquet", "importance_fold": "importance_fold",
                    ".lesion": r"\.lesion\b", "fold{}": r"fold\{\w*\}", "minority folder": r"/minority\b|\bminority/"}


def _catalogued_paths() -> set[str]:
    """Every path the catalogue names that a string could spell out: its folders and files with a
    "/" in them, and the base names of its files."""
    from lesion_ml import artefacts

    paths = {v for v in vars(artefacts).values() if isinstance(v, Path)} - {artefacts.PARAMS}
    return {p.as_posix() for p in paths if "/" in p.as_posix()} | {p.name for p in paths if p.suffix}


def _strings(tree: ast.AST) -> list[tuple[int, str, bool]]:
    """(line, text, is a docstring) of every string in the module; an f-string's text has "{}"
    for each replacement field."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found, inner = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            inner |= {id(v) for v in node.values}
            found.append((node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values),
                          False))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inner:
            found.append((node.lineno, node.value, id(node) in docs))
    return found


# Strings that look like a catalogued name but are not paths: (module, line's text) -> why.
NOT_PATHS = {("tune/study.py", 'f"{base_name}-fold{k}"'): "Optuna study names, one per outer fold, in the tuning "
             "database (not files)",
             ("model/build.py", 'f"{name}_fold{k}.safetensors"'): "file names inside the exported bundle, listed in "
             "its manifest (not paths of the stage graph)"}


def _path_spellings(path: Path) -> list[str]:
    """Where a module spells a catalogued path: a catalogued name anywhere (comments and
    docstrings too), or a catalogued path as a path literal (a string with no blank in it:
    prose, such as an error message that tells the user which report to open, may name one)."""
    text = path.read_text()
    rel = path.relative_to(LIBRARY).as_posix() if path.is_relative_to(LIBRARY) else path.name
    exempt = [snippet for (module, snippet) in NOT_PATHS if module == rel]
    hits = [f"{path.name}:{i}: {n}" for i, line in enumerate(text.splitlines(), 1)
            for n, pattern in CATALOGUED_NAMES.items()
            if re.search(pattern, line) and not any(snippet in line for snippet in exempt)]
    paths = _catalogued_paths()
    hits += [f"{path.name}:{line}: {text_!r}" for line, text_, doc in _strings(ast.parse(text))
             if not doc and not re.search(r"\s", text_) and any(p in text_ for p in paths)]
    return hits


def _code_files() -> list[Path]:
    return [p for d in CODE_DIRS for p in sorted((REPO / d).rglob("*.py")) if p != CATALOGUE]


def test_only_the_catalogue_names_the_stage_graphs_files() -> None:
    """No module of lesion_ml/, tasks/ or flows/ but lesion_ml/artefacts.py spells a path of the
    stage graph: they take it from the catalogue (or are passed it)."""
    assert [hit for p in _code_files() for hit in _path_spellings(p)] == []


def test_the_path_check_finds_a_spelled_out_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('"""Reads models/final."""\nfrom pathlib import Path\n'
                   'def f(k):\n    return Path("data/interim/lesions.parquet"), Path("models/gbdt") / f"fold{k}.txt"\n'
                   '# the task cache in .lesion/prefect\n')
    assert _path_spellings(bad) == ["bad.py:4: fold{}", "bad.py:5: .lesion",
                                    "bad.py:4: 'data/interim/lesions.parquet'", "bad.py:4: 'models/gbdt'"]


def _dvc_outs() -> list[str]:
    """Every out, metric and plot of dvc.yaml, a foreach stage's `${key}` as "KEY"."""
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outs = []
    for stage in stages.values():
        body = stage.get("do", stage)
        for kind in ("outs", "metrics", "plots"):
            for entry in body.get(kind, []):
                outs += [str(k) for k in entry] if isinstance(entry, dict) else [str(entry)]
    return [o.replace("${key}", "KEY") for o in outs]


def _catalogue_entries() -> set[str]:
    """The catalogue's paths, its per-model / per-study / per-set paths for the name "KEY"."""
    import inspect

    from lesion_ml import artefacts

    found = {v.as_posix() for v in vars(artefacts).values() if isinstance(v, Path)}
    for fn in vars(artefacts).values():
        if inspect.isfunction(fn) and fn.__module__ == artefacts.__name__:
            params = list(inspect.signature(fn).parameters.values())
            if len(params) == 1 and params[0].annotation in ("str", str):
                found.add(fn("KEY").as_posix())
    return found | {artefacts.curves(k).as_posix() for k in artefacts.CURVE_KINDS}


def test_every_dvc_out_is_in_the_catalogue() -> None:
    outs = _dvc_outs()
    assert {"data/interim", "models/cnn/KEY", "reports/external/KEY.json", "reports/curves/roc"} <= set(outs)
    assert sorted(set(outs) - _catalogue_entries()) == []


def test_the_dvc_check_sees_an_out_the_catalogue_lacks() -> None:
    assert "models/cnn/KEY" in _catalogue_entries() and "models/cnn/KEY/extra.bin" not in _catalogue_entries()


# -- the library takes data and returns data; tasks and the application edge do the I/O ---------
WRITE_CALLS = {"open", "write_text", "write_bytes", "write_json", "write_csv", "write_parquet", "write_yaml",
               "to_parquet", "to_csv", "savefig", "save_file", "save", "atomic_path", "replace_folder",
               "atomic_folder"}
# The library modules that write files themselves, and why. Everything else in lesion_ml returns
# what it computed and lets its caller (a task, or lesion_ml/app) write it.
ALLOWED_WRITERS = {
    "io.py": "the atomic writers (write_json, write_parquet, ..., atomic_path, atomic_folder) everyone calls",
    "app": "the application edge (the CLI, benchmarks, the Prefect server): reads and writes like a task",
    "config/params.py": "`lesion params --merge` rewrites params.yaml, the file this module reads and validates",
    "data/synthetic.py": "the demo set (up to 401,059 images in one HDF5 file) is too large to return: one output folder",
    "image/balance.py": "the minority set's HDF5 file of copies is too large to return: one output path",
    "image/train.py": "the resumable training state, written while training runs: one checkpoint path",
    "model/bundle.py": "the model bundle's format (write_bundle): one output folder",
}


def _writes(path: Path, root: Path = LIBRARY) -> list[str]:
    """Calls that write a file: open(), .write_*(), .to_parquet(), .savefig(), atomic_path(), ...
    (a figure saved into an in-memory buffer, `buf = io.BytesIO()`, writes no file)."""
    tree = ast.parse(path.read_text())
    buffers = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
               and ast.unparse(n.value.func) in ("io.BytesIO", "BytesIO", "io.StringIO", "StringIO")
               for t in n.targets if isinstance(t, ast.Name)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if isinstance(node.func, ast.Attribute) and name == "open":
                continue  # os.open, h5py.h5d.open, Image.open: reading handles, not the builtin
            if node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in buffers:
                continue
            if name in WRITE_CALLS:
                found.append(f"{path.relative_to(root)}:{node.lineno} {name}()")
    return found


def _allowed_writer(path: Path) -> bool:
    rel = path.relative_to(LIBRARY).as_posix()
    return any(rel == a or rel.startswith(a + "/") for a in ALLOWED_WRITERS)


def test_only_the_allowed_library_modules_write_files() -> None:
    assert [w for p in sorted(LIBRARY.rglob("*.py")) if not _allowed_writer(p) for w in _writes(p)] == []


def test_the_write_check_finds_a_write(tmp_path: Path) -> None:
    bad = LIBRARY / "evaluate" / "_layout_probe.py"  # inside the library, where the rule applies
    assert not _allowed_writer(bad)
    probe = tmp_path / "probe.py"
    probe.write_text("import io, os\ndef f(df, p, fig):\n    df.to_parquet(p)\n    os.open(p, 0)\n"
                     "    with open(p, 'w') as fh:\n        fh.write('x')\n    buf = io.BytesIO()\n"
                     "    fig.savefig(buf)\n")
    assert [w.split(" ", 1)[1] for w in _writes(probe, root=tmp_path)] == ["to_parquet()", "open()"]


# -- no function of the library takes the whole Params -----------------------------------------
PARAMS_ALLOWED = ("config", "app")  # config builds Params; the application edge loads params.yaml


def _takes_params(path: Path) -> list[str]:
    """Functions with a parameter annotated `Params` (the whole params.yaml)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            if any(a.annotation is not None and re.search(r"\bParams\b", ast.unparse(a.annotation)) for a in args):
                found.append(f"{path.name}:{node.lineno} {node.name}")
    return found


def test_no_library_function_takes_the_whole_params() -> None:
    """Library functions take their own config section (STYLE.md: the narrowest section)."""
    paths = [p for p in _library_modules() if p.relative_to(LIBRARY).parts[0] not in PARAMS_ALLOWED]
    assert [f for p in paths for f in _takes_params(p)] == []


def test_the_params_check_finds_a_function_taking_params(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def a(p: Params, x: int): ...\ndef b(cfg: TrainGbdtConfig): ...\n"
                     "def c(*, base: 'Params | None'): ...\n")
    assert _takes_params(probe) == ["probe.py:1 a", "probe.py:3 c"]


# -- no import circle in lesion_ml ------------------------------------------------------------
def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _import_graph(paths: list[Path], root: Path = REPO) -> dict[str, set[str]]:
    """Module -> the lesion_ml modules it imports, at the top or inside a function (`from a import
    b` counts as importing a.b when that is a module, else a)."""
    modules = {_module_name(p, root): p for p in paths}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                deps |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of modules that reach each other through imports (directly or through others);
    a package's __init__ re-exporting its modules is not a circle with them."""
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for d in graph.get(todo.pop(), ()):
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return seen

    reached = {m: reach(m) for m in graph}
    return sorted((a, b) for a in graph for b in reached[a]
                  if a < b and a in reached[b] and not (b.startswith(a + ".") or a.startswith(b + ".")))


def test_no_import_circle_in_the_library() -> None:
    """No two modules of lesion_ml import each other, directly, through other modules or through
    an import inside a function."""
    graph = _import_graph(sorted(LIBRARY.rglob("*.py")))
    assert _circles(graph) == []


def test_the_circle_check_finds_a_circle_through_a_function_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from pkg import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg.a import g\n")
    graph = _import_graph(sorted(pkg.glob("*.py")), root=tmp_path)
    assert _circles(graph) == [("pkg.a", "pkg.b"), ("pkg.a", "pkg.c"), ("pkg.b", "pkg.c")]


# -- stage calls pass paths by keyword --------------------------------------------------------
def _positional_calls(path: Path, limit: int = 3) -> list[str]:
    """Calls that pass more than `limit` arguments by position (a log call's format arguments aside)."""
    return [f"{path.name}:{n.lineno} {ast.unparse(n.func)}: {len(n.args)} positional"
            for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call) and len(n.args) > limit
            and not re.match(r"(log|logger|logging)\.\w+$", ast.unparse(n.func))]


def test_no_stage_call_passes_more_than_three_arguments_by_position() -> None:
    """The stages (flows/), their tasks (tasks/) and the CLI's commands (lesion_ml/app/cli.py and
    validation.py, the CLI's and the validate stage's I/O) call tasks and library functions with
    keywords: two swapped paths cannot type-check and run."""
    paths = [p for d in ("flows", "tasks") for p in sorted((REPO / d).glob("*.py"))] + \
        [APP / "cli.py", APP / "validation.py"]
    assert [c for p in paths for c in _positional_calls(p)] == []


def test_the_positional_check_finds_a_long_call(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("f(a, b, c)\ng(a, b, c, d, e=1)\nlog.info('%s %s %s', a, b, c)\n")
    assert _positional_calls(probe) == ["probe.py:2 g: 4 positional"]


# -- no private helper is imported from another module ----------------------------------------
def _private_imports(path: Path) -> list[str]:
    """`from <lesion_ml|tasks|flows module> import _name` anywhere in the module."""
    return [f"{path.name}:{n.lineno} {n.module}.{a.name}" for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] in ("lesion_ml", "tasks", "flows")
            for a in n.names if a.name.startswith("_") and not a.name.startswith("__")]


def test_no_private_helper_is_imported_from_another_module() -> None:
    paths = [p for d in CODE_DIRS for p in sorted((REPO / d).rglob("*.py"))]
    assert [i for p in paths for i in _private_imports(p)] == []


def test_the_private_import_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from lesion_ml.io import write_json\ndef f():\n    from lesion_ml.config.base import (\n"
                     "        Section, _file_names)\nfrom numpy import _globals\n")
    assert _private_imports(probe) == ["probe.py:3 lesion_ml.config.base._file_names"]
