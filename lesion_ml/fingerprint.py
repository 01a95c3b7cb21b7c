"""The one rule for "what changed": a content fingerprint of the code a step runs and of the
environment it runs in.

`code_fingerprint` keys both the pipeline's task cache (tasks/cache.py) and the image models'
resumable checkpoints (lesion_ml.image.train), so a result is reused only by the code, the
library versions and the lock file that produced it. It hashes
  * the source of every module of the given packages reachable from the start modules, followed
    through their imports (module level and inside functions): a checkpoint of
    lesion_ml.image.train depends on lesion_ml.sampling, lesion_ml.data.images and the rest of
    what training imports, not only on one folder;
  * the environment (`environment_digest`): the contents of the project's lock file,
    requirements.lock beside the lesion_ml package (the repository root of a checkout; a wheel
    install has none), and the installed version of every distribution it names (of every
    installed distribution without a lock file): an upgrade reruns, a tool installed beside the
    pipeline (a notebook, a linter) does not.

Every process computes the same fingerprint for the same code, versions and lock file, whatever
else it imported: a checkpoint written by a stage is resumed by a test, a bench or another stage.

File contents and image stores are fingerprinted by lesion_ml.io (`path_digest`).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import types
from collections.abc import Iterable
from pathlib import Path

LIBRARY = ("lesion_ml",)


PROJECT_LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"


class Environment:
    """What besides the code decides a result: installed library versions and the lock file
    (`lock`: the project's requirements.lock, `PROJECT_LOCK`)."""

    def __init__(self) -> None:
        self.lock: Path | None = PROJECT_LOCK

    def use_lock_file(self, path: Path | str | None) -> None:
        """Fingerprint the contents of `path` as the lock file from now on (None: no lock file)."""
        self.lock = Path(path) if path is not None else None
        environment_digest.cache_clear()
        code_fingerprint.cache_clear()


ENVIRONMENT = Environment()


def _canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them (case, "_" and "." do not matter)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _distributions() -> dict[str, str]:
    """Installed distributions: canonical name -> version."""
    return {_canonical(d.metadata["Name"] or ""): d.version for d in importlib.metadata.distributions()}


def locked_names(text: str) -> frozenset[str]:
    """The canonical names of the distributions a requirements lock file pins (name==version lines)."""
    names = (re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line) for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith(("#", "-")))
    return frozenset(_canonical(m.group(1)) for m in names if m)


@functools.lru_cache(maxsize=4)
def environment_digest() -> str:
    """sha256 of the lock file's contents ("none" without one) and of the installed versions of the
    distributions it names (every installed distribution without a lock file)."""
    lock = ENVIRONMENT.lock
    text = _read_source(lock) if lock is not None and lock.is_file() else None
    names = locked_names(text.decode()) if text is not None else None
    installed = _distributions()
    versions = "\n".join(f"{n}=={installed[n]}" for n in sorted(installed) if names is None or n in names)
    h = hashlib.sha256(versions.encode())
    h.update(b"\nlock:" + (text if text is not None else b"none"))
    return h.hexdigest()


def _read_source(path: Path | str) -> bytes:
    return Path(path).read_bytes()


def _in(module_name: str | None, packages: tuple[str, ...]) -> bool:
    return bool(module_name) and module_name.split(".")[0] in packages


def module_file(name: str) -> str | None:
    """The source file of module `name` (None for a namespace or a module without a file)."""
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__file__", None)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.has_location else None


def _imported_modules(file: str, packages: tuple[str, ...]) -> frozenset[str]:
    """The modules of `packages` that a source file imports anywhere: at module level or inside
    a function, which module-level references miss. Memoised per file version (every task of a
    stage walks mostly the same modules)."""
    st = os.stat(file)
    return _imports_of(file, (st.st_mtime_ns, st.st_size), packages)


@functools.lru_cache(maxsize=2048)
def _imports_of(file: str, version: tuple[int, int], packages: tuple[str, ...]) -> frozenset[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(_read_source(file))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if _in(name, packages) and name not in found:
                try:
                    if importlib.util.find_spec(name) is not None:
                        found.add(name)
                except (ImportError, ValueError):  # a name imported from a module, not a module
                    pass
    return frozenset(found)


def module_closure(start: Iterable[str], packages: tuple[str, ...] = LIBRARY) -> set[str]:
    """The modules of `packages` reachable from `start` through module-level references and
    through import statements anywhere in their source (a function-local import included)."""
    seen: set[str] = set()
    todo = [m for m in start if _in(m, packages)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        file = module_file(name)
        if file is None:
            continue
        seen.add(name)
        refs = set(_imported_modules(file, packages))
        if name in sys.modules:
            for obj in vars(sys.modules[name]).values():
                ref = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
                if _in(ref, packages):
                    refs.add(ref)
        todo.extend(r for r in refs if r not in seen)
    return seen


@functools.lru_cache(maxsize=256)
def _fingerprint(start: tuple[str, ...], packages: tuple[str, ...], extra: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for text in extra:
        h.update(text.encode() + b"\x00")
    for name in sorted(module_closure(start, packages)):
        file = module_file(name)
        if file:
            h.update(f"{name}\n".encode() + _read_source(file))
    h.update(b"\nenvironment:" + environment_digest().encode())
    return h.hexdigest()


def code_fingerprint(start: Iterable[str], packages: Iterable[str] = LIBRARY, extra: Iterable[str] = ()) -> str:
    """The fingerprint of running code that starts in the modules `start`.

    Args:
        start: module names (e.g. "lesion_ml.image.train"); those outside `packages` are ignored.
        packages: the top-level packages whose sources count (the library; the task cache adds its
            own package).
        extra: further texts to include (a task function's own source).

    Returns:
        The hex sha256 of `extra`, the sources of `module_closure(start, packages)` and
        `environment_digest()`. Memoised per process: sources are read once.
    """
    return _fingerprint(tuple(sorted(set(start))), tuple(packages), tuple(extra))


code_fingerprint.cache_clear = _fingerprint.cache_clear  # type: ignore[attr-defined]
