"""pyproject.toml, requirements.lock and the code's imports agree (fast: no network, no install).

- Every distribution declared in pyproject (`dependencies` and the `test` and `dask` extras; `docs`
  is built elsewhere) is pinned in requirements.lock, at a version its specifier allows.
- The lock holds exactly what the declared distributions need, transitively (by the installed
  metadata of .venv, which `make install` installs from the lock): no pin left over from a dropped
  dependency, none missing.
- Every third-party module that lesion_ml/, tasks/ and flows/ import belongs to a distribution in
  `dependencies`; one of the `dask` extra only when imported inside a function (the Dask path).
- Every third-party module that tests/ and scripts/ import belongs to a declared distribution.
- Every declared distribution is imported by the code it is declared for, save those in USED_BY_NAME.

pyproject.toml is read directly: the installed metadata of lesion-ml (an editable install) is only
as new as the last `make install`. Each check is a function of text or of an import table, and the
tests at the end feed it faults to show that it reports them.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_DIRS = ("lesion_ml", "tasks", "flows")
TOOL_DIRS = ("tests", "scripts")
LOCKED_GROUPS = ("dependencies", "test", "dask")
# Declared but never imported, and why: each must stay declared in its group, or it is stale.
USED_BY_NAME: dict[str, dict[str, str]] = {
    "dependencies": {"dvc": "run as the `dvc` command (lesion_ml/app/dvc_cli.py, dvc.yaml), never imported"},
    "test": {"pytest-xdist": "a pytest plugin: the Makefile's test target runs pytest -n 2"},
}
# What pip freeze leaves out of the lock even where a locked package requires it.
NOT_FROZEN = frozenset({"pip", "setuptools", "wheel", "distribute"})


def canonical(name: str) -> str:
    """PEP 503's normalised name."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- reading pyproject.toml and requirements.lock ------------------------------------------------

def declared(pyproject_text: str) -> dict[str, list[Requirement]]:
    """{"dependencies": [...], extra: [...]} from pyproject.toml's [project] table."""
    project = tomllib.loads(pyproject_text)["project"]
    groups = {"dependencies": [Requirement(r) for r in project.get("dependencies", [])]}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        groups[extra] = [Requirement(r) for r in reqs]
    return groups


def read_lock(text: str) -> tuple[dict[str, Version], list[str]]:
    """The lock's pins by normalised name, and its lines that are not `name==version`."""
    pins: dict[str, Version] = {}
    bad: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        try:
            if match is None:
                raise InvalidVersion(line)
            name = canonical(match.group(1))
            if name in pins:
                bad.append(f"{line} (pinned twice)")
            pins[name] = Version(match.group(2))
        except InvalidVersion:
            bad.append(line)
    return pins, bad


def lock_problems(reqs: Iterable[Requirement], pins: Mapping[str, Version]) -> list[str]:
    """Declared distributions that the lock does not pin, or pins at a version they exclude."""
    problems = []
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        version = pins.get(canonical(req.name))
        if version is None:
            problems.append(f"{req.name} is declared but not pinned in requirements.lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name} is pinned at {version}, which {req} excludes")
    return problems


def closure(reqs: Iterable[Requirement], requires: Mapping[str, list[str]]) -> tuple[set[str], set[str]]:
    """The normalised names that `reqs` need, transitively, by `requires` ({name: Requires-Dist
    lines}, the installed metadata), and the names needed but absent from `requires`."""
    wanted: dict[str, frozenset[str]] = {}
    absent: set[str] = set()
    queue = [(canonical(r.name), frozenset(r.extras), r) for r in reqs]
    while queue:
        name, extras, req = queue.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if name in wanted and extras <= wanted[name]:
            continue
        wanted[name] = wanted.get(name, frozenset()) | extras
        if name not in requires:
            absent.add(name)
            continue
        for line in requires[name]:
            sub = Requirement(line)
            if sub.marker is not None and not any(sub.marker.evaluate({"extra": e}) for e in ("", *wanted[name])):
                continue
            queue.append((canonical(sub.name), frozenset(sub.extras), Requirement(str(sub).split(";")[0])))
    return set(wanted), absent


def lock_extent_problems(reqs: Iterable[Requirement], pins: Mapping[str, Version],
                         requires: Mapping[str, list[str]]) -> list[str]:
    """Pins that nothing declared needs, and needed distributions that the lock leaves out."""
    needed, absent = closure(reqs, requires)
    problems = [f"{name} is needed (metadata of the installed packages) but not installed, so not checked"
                for name in sorted(absent - NOT_FROZEN)]
    problems += [f"{name} is pinned in requirements.lock but no declared dependency needs it"
                 for name in sorted(pins.keys() - needed)]
    problems += [f"{name} is needed by a declared dependency but not pinned in requirements.lock"
                 for name in sorted(needed - pins.keys() - NOT_FROZEN - absent)]
    return problems


# --- the code's imports ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Import:
    module: str  # the top-level module
    file: str
    lazy: bool  # inside a function: imported only when that function runs
    optional: bool  # inside `try: ... except ImportError`


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return handler.type is None or any(isinstance(t, ast.Name) and t.id in names for t in types)


def imports_in(source: str, file: str) -> list[Import]:
    """The absolute imports of one source file, by top-level module."""
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool, optional: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(a.name.split(".")[0], file, lazy, optional) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(Import(node.module.split(".")[0], file, lazy, optional))
        lazy = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.Try):
            guarded = optional or any(_catches_import_error(h) for h in node.handlers)
            for child in node.body:
                visit(child, lazy, guarded)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, lazy, optional)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, lazy, optional)

    visit(ast.parse(source, file), False, False)
    return found


def local_modules(root: Path) -> set[str]:
    """Names that resolve to this repository: its top-level folders and modules, and the modules
    of tests/ and scripts/ (pytest and `python scripts/x.py` put their folders on sys.path)."""
    names = {p.name for p in root.iterdir() if p.is_dir()} | {p.stem for p in root.glob("*.py")}
    for folder in TOOL_DIRS:
        names |= {p.stem for p in (root / folder).rglob("*.py")} | {p.name for p in (root / folder).rglob("*")
                                                                    if p.is_dir()}
    return names


def third_party_imports(root: Path, folders: Iterable[str]) -> list[Import]:
    local = local_modules(root)
    found = []
    for folder in folders:
        for file in sorted((root / folder).rglob("*.py")):
            for imp in imports_in(file.read_text(), str(file.relative_to(root))):
                if imp.module not in sys.stdlib_module_names and imp.module not in local:
                    found.append(imp)
    return found


@functools.cache
def installed_modules() -> dict[str, frozenset[str]]:
    """{top-level module: normalised names of the installed distributions that provide it}."""
    return {module: frozenset(canonical(d) for d in dists) for module, dists in md.packages_distributions().items()}


def import_problems(imports: Iterable[Import], modules: Mapping[str, frozenset[str]], allowed: set[str],
                    lazy_allowed: set[str] | frozenset[str] = frozenset(), what: str = "dependencies") -> list[str]:
    """Imports whose module no distribution in `allowed` provides (nor one in `lazy_allowed`,
    for an import inside a function)."""
    problems = []
    for imp in imports:
        dists = modules.get(imp.module)
        if dists is None:
            if not imp.optional:
                problems.append(f"{imp.file} imports {imp.module}, which no installed distribution provides")
        elif not dists & allowed:
            if imp.lazy and dists & lazy_allowed:
                continue
            where = "at module level " if dists & lazy_allowed else ""
            problems.append(f"{imp.file} imports {imp.module} {where}(distribution {', '.join(sorted(dists))}), "
                            f"which is not declared in {what}")
    return sorted(set(problems))


def unused_problems(group: str, reqs: Iterable[Requirement], imports: Iterable[Import],
                    modules: Mapping[str, frozenset[str]], used_by_name: Mapping[str, str]) -> list[str]:
    """Declared distributions of `group` that none of `imports` imports and that are not in
    `used_by_name`; and entries of `used_by_name` no longer declared."""
    imported = set().union(*(modules.get(imp.module, frozenset()) for imp in imports))
    names = {canonical(r.name) for r in reqs}
    problems = [f"{name} is declared in {group} but nothing imports it"
                for name in sorted(names - imported - {canonical(n) for n in used_by_name})]
    problems += [f"{name} is listed as used by name but is not declared in {group}"
                 for name in sorted({canonical(n) for n in used_by_name} - names)]
    return problems


# --- the project -------------------------------------------------------------------------------------

@functools.cache
def project_groups() -> dict[str, list[Requirement]]:
    return declared((ROOT / "pyproject.toml").read_text())


def names(*groups: str) -> set[str]:
    return {canonical(r.name) for g in groups for r in project_groups().get(g, [])}


def test_lock_pins_every_declared_distribution_at_an_allowed_version() -> None:
    groups = project_groups()
    assert set(LOCKED_GROUPS) <= groups.keys(), f"pyproject.toml lacks {set(LOCKED_GROUPS) - groups.keys()}"
    pins, bad = read_lock((ROOT / "requirements.lock").read_text())
    assert not bad, f"requirements.lock lines that are not name==version: {bad}"
    assert not lock_problems([r for g in LOCKED_GROUPS for r in groups[g]], pins)
    assert "lesion-ml" not in pins and not names("docs") & pins.keys() - names(*LOCKED_GROUPS), \
        "the project itself and the docs extra stay out of requirements.lock"


def test_lock_holds_exactly_what_the_declared_distributions_need() -> None:
    pins, _ = read_lock((ROOT / "requirements.lock").read_text())
    installed = {canonical(d.metadata["Name"]): d for d in md.distributions()}
    stale = {n: str(installed[n].version) for n in pins if n in installed and Version(installed[n].version) != pins[n]}
    assert not stale, f".venv differs from requirements.lock (run make install): {stale}"
    requires = {name: list(d.requires or []) for name, d in installed.items() if name in pins or name in NOT_FROZEN}
    reqs = [r for g in LOCKED_GROUPS for r in project_groups()[g]]
    assert not lock_extent_problems(reqs, pins, requires)


def test_run_time_imports_are_declared() -> None:
    imports = third_party_imports(ROOT, RUNTIME_DIRS)
    assert imports, "found no imports: the scan is broken"
    assert not import_problems(imports, installed_modules(), names("dependencies"), names("dask"))


def test_test_and_script_imports_are_declared() -> None:
    imports = third_party_imports(ROOT, TOOL_DIRS)
    assert not import_problems(imports, installed_modules(), names("dependencies", "test", "dask", "docs"),
                               what="dependencies or an extra")


def test_every_declared_distribution_is_imported() -> None:
    runtime = third_party_imports(ROOT, RUNTIME_DIRS)
    tools = third_party_imports(ROOT, TOOL_DIRS)
    groups = project_groups()
    problems = unused_problems("dependencies", groups["dependencies"], runtime, installed_modules(),
                               USED_BY_NAME["dependencies"])
    problems += unused_problems("dask", groups["dask"], [i for i in runtime if i.lazy], installed_modules(),
                                USED_BY_NAME.get("dask", {}))
    problems += unused_problems("test", groups["test"], tools, installed_modules(), USED_BY_NAME["test"])
    assert not problems


# --- each check reports a fault -------------------------------------------------------------------

FAKE_PYPROJECT = """
[project]
name = "x"
dependencies = ["numpy>=3", "Py_YAML", "torch", "not-locked", "win-only; sys_platform == 'win32'"]
[project.optional-dependencies]
test = ["pytest"]
dask = ["prefect-dask"]
"""
FAKE_LOCK = "# header\nnumpy==2.4.6\npy-yaml==6.0\ntorch==2.14.1\npytest==9.2.0\nprefect-dask==0.3.7\nbad line\n"
FAKE_MODULES = {"numpy": frozenset({"numpy"}), "yaml": frozenset({"py-yaml"}), "cv2": frozenset({"opencv-python"}),
                "prefect_dask": frozenset({"prefect-dask"}), "pytest": frozenset({"pytest"}),
                "filelock": frozenset({"filelock"})}


def test_lock_check_reports_missing_and_excluded_pins() -> None:
    groups = declared(FAKE_PYPROJECT)
    pins, bad = read_lock(FAKE_LOCK)
    assert bad == ["bad line"]
    assert read_lock("a-b==1\nA_B==2\n")[1] == ["A_B==2 (pinned twice)"]
    problems = lock_problems([r for g in LOCKED_GROUPS for r in groups[g]], pins)
    assert problems == ["numpy is pinned at 2.4.6, which numpy>=3 excludes",
                        "not-locked is declared but not pinned in requirements.lock"]  # Py_YAML matches py-yaml


def test_lock_extent_check_reports_leftover_and_missing_pins() -> None:
    requires = {"a": ["b>=1", "c; extra == 'x'", "d; python_version < '3'"], "b": ["setuptools"], "c": [],
                "e": []}
    pins, _ = read_lock("a==1\nb==1\ne==1\n")
    assert lock_extent_problems([Requirement("a")], pins, requires) == [
        "e is pinned in requirements.lock but no declared dependency needs it"]
    assert lock_extent_problems([Requirement("a[x]")], pins, requires) == [
        "e is pinned in requirements.lock but no declared dependency needs it",
        "c is needed by a declared dependency but not pinned in requirements.lock"]


def test_import_scan_tells_lazy_optional_and_relative_imports() -> None:
    source = ("import numpy.linalg\nfrom . import sibling\n"
              "try:\n    import fast\nexcept ImportError:\n    fast = None\n"
              "def f():\n    from prefect_dask import DaskTaskRunner\n")
    assert imports_in(source, "m.py") == [Import("numpy", "m.py", False, False), Import("fast", "m.py", False, True),
                                          Import("prefect_dask", "m.py", True, False)]


def test_import_check_reports_undeclared_modules() -> None:
    allowed, dask = {"numpy", "py-yaml"}, {"prefect-dask"}
    imports = [Import("numpy", "a.py", False, False), Import("cv2", "a.py", False, False),
               Import("prefect_dask", "b.py", True, False), Import("prefect_dask", "c.py", False, False),
               Import("nowhere", "d.py", False, False), Import("maybe", "d.py", False, True)]
    assert import_problems(imports, FAKE_MODULES, allowed, dask) == [
        "a.py imports cv2 (distribution opencv-python), which is not declared in dependencies",
        "c.py imports prefect_dask at module level (distribution prefect-dask), which is not declared in dependencies",
        "d.py imports nowhere, which no installed distribution provides"]
    # tests/ importing filelock without it in the test extra
    assert import_problems([Import("filelock", "tests/conftest.py", False, False)], FAKE_MODULES,
                           {"pytest"}, what="the test extra") == [
        "tests/conftest.py imports filelock (distribution filelock), which is not declared in the test extra"]


def test_unused_check_reports_declared_but_not_imported() -> None:
    reqs = [Requirement(r) for r in ("numpy", "pillow", "dvc")]
    imports = [Import("numpy", "a.py", False, False)]
    assert unused_problems("dependencies", reqs, imports, FAKE_MODULES, {"dvc": "a command"}) == [
        "pillow is declared in dependencies but nothing imports it"]
    assert unused_problems("dependencies", reqs[:2], imports, FAKE_MODULES, {"dvc": "a command"}) == [
        "pillow is declared in dependencies but nothing imports it",
        "dvc is listed as used by name but is not declared in dependencies"]
