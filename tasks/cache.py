"""Content-keyed caching of the pipeline's Prefect tasks.

A task's cache key is a hash of
  * its input files' CONTENTS (a Path argument is hashed by what it holds, a folder by every file
    in it; an image-store manifest also by the images it points to), never by the path text;
  * its other arguments (params sections as JSON);
  * the source of the task function and of every lesion_ml module it uses, followed through the
    imports, function-local ones included (editing lesion_ml/tabular/gbdt.py reruns the LightGBM
    tasks, not ingest);
  * the environment: every installed library's version and the contents of requirements.lock.
The code and environment part is lesion_ml.fingerprint's `code_fingerprint`, the same function
that keys the image models' checkpoints: one rule decides what changed.
Prefect's own INPUTS policy hashes a Path as text and TASK_SOURCE sees only the wrapper's lines,
so neither notices new data or edited library code.

A hit also needs the task's outputs to be where it left them: every file the task wrote (through
lesion_ml.io) is fingerprinted (size, mtime, sha256) after the run; when one is missing or its
contents changed, the cached result is dropped and the task runs again. Results, keys, fingerprints and the hash memo
live in the project's state folder (lesion_ml.artefacts.TASK_CACHE: outside every DVC out, git-ignored); persisted results are small (paths,
metrics dicts). File hashes are lesion_ml.io's (the same fingerprint keys the image models'
checkpoints), memoised by (path, size, mtime, ctime, inode), so an unchanged 50 GB image file is
read once.
"""
from __future__ import annotations

import builtins
import dis
import functools
import hashlib
import inspect
import json
import logging
import os
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy
from pydantic import BaseModel

from lesion_ml.artefacts import STATE, TASK_CACHE
from lesion_ml.fingerprint import code_fingerprint
from lesion_ml.io import FILE_HASHES, image_store_digest, is_transient, path_digest, recording_writes, write_json

log = logging.getLogger("lesion_ml.cache")

CACHE_DIR = TASK_CACHE
KEYS = CACHE_DIR / "keys"  # Prefect's cache records (key -> result location)
RESULTS = CACHE_DIR / "results"  # the persisted (small) results
OUTPUTS = CACHE_DIR / "outputs"  # key -> fingerprints of the files the run wrote
MEMO = CACHE_DIR / "file-hashes.json"
OURS = ("lesion_ml", "tasks")  # the packages whose sources a task key covers

#: Names of the tasks whose bodies ran in this process, in order (a cached task is not listed).
executed: list[str] = []


# -- retries ---------------------------------------------------------------------------------
# Only transient I/O errors are retried (a flaky network share, a busy or locked file, an
# interrupted read): a task that hit one runs again, rewriting its outputs atomically, and training
# resumes from its last checkpoint. Bad data, bad params, missing files, missing permissions and a
# full disk do not pass by waiting; they fail at once with their message.

def retry_transient_io(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry when the task failed with a transient OSError."""
    return is_transient(state.data if isinstance(state.data, BaseException) else None)


# Passed to every @task of tasks/: up to 2 retries, after 2 s and 10 s.
IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": retry_transient_io}


# -- hashing inputs ---------------------------------------------------------------------------
# The file fingerprint and its memo are the library's (lesion_ml.io), shared with the training
# checkpoints' keys; here the memo is made persistent.
HASHES = FILE_HASHES
HASHES.use_memo_file(MEMO)


def _store_digest(manifest: Path) -> str:
    """An image-store manifest (data/interim/images.json) and the images it points to."""
    try:
        m = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return path_digest(manifest)
    h = hashlib.sha256(path_digest(manifest).encode())
    h.update(image_store_digest(m.get("hdf5"), m.get("root"), m.get("files") or {}).encode())
    return "store:" + h.hexdigest()


def _digest(value: Any, name: str = "") -> Any:
    """A JSON-able stand-in for an argument: file contents for paths, JSON for params."""
    if isinstance(value, Path):
        return _store_digest(value) if name == "images" and value.suffix == ".json" else path_digest(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _digest(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_digest(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


# -- hashing code -----------------------------------------------------------------------------
def _code_names(code: types.CodeType) -> set[str]:
    """The global names a function (and the functions nested in it) reads."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _is_ours(module_name: str | None) -> bool:
    return bool(module_name) and module_name.split(".")[0] in OURS


@functools.lru_cache(maxsize=None)
def code_digest(fn: Callable) -> str:
    """The task function's source plus `code_fingerprint` of the lesion_ml modules it reaches (and
    the environment: library versions and requirements.lock).

    Library modules are followed through everything they import; the tasks/ module of the task
    only through the names the function uses (so a task does not depend on its neighbours)."""
    start: set[str] = set()
    todo, done = [fn], set()
    h = hashlib.sha256()
    while todo:  # the function and the tasks/ helpers it calls
        f = todo.pop()
        if f in done:
            continue
        done.add(f)
        h.update(inspect.getsource(f).encode())
        for name in sorted(_code_names(f.__code__)):
            if name not in f.__globals__ and not hasattr(builtins, name) and f.__module__ in sys.modules:
                # a helper defined further down the module (not bound yet at import): take the module
                start.add(f.__module__)
            obj = f.__globals__.get(name)
            mod = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
            if not _is_ours(mod):
                continue
            if isinstance(obj, types.FunctionType) and mod.startswith("tasks"):
                todo.append(obj)
            elif mod.startswith("lesion_ml") or isinstance(obj, types.ModuleType):
                start.add(mod)
    return code_fingerprint(start, OURS, [h.hexdigest()])


def task_key(fn: Callable, arguments: dict[str, Any], *, outputs: tuple[str, ...], code: str,
             runtime: tuple[str, ...] = ()) -> str:
    """The cache key of calling `fn` (the undecorated task function) with `arguments`; `code` is
    its `code_digest`, taken where the source files are (a Dask worker gets the function by value).
    The arguments named in `runtime` change how the task runs, not what it writes: they are not
    part of the key."""
    sig = inspect.signature(fn)
    bound = sig.bind_partial(**{k: v for k, v in arguments.items() if k in sig.parameters})
    bound.apply_defaults()
    parts = {name: (str(value) if name in outputs else _digest(value, name))
             for name, value in bound.arguments.items() if name not in runtime}
    text = json.dumps({"task": f"{fn.__module__}.{fn.__qualname__}", "code": code, "args": parts},
                      sort_keys=True, default=str)
    HASHES.save()
    return f"{fn.__name__}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


# -- outputs ----------------------------------------------------------------------------------
def _fingerprint(paths_: Iterable[Path]) -> dict[str, list]:
    """(size, mtime_ns, sha256) of every file written (folders: every file below them)."""
    out = {}
    for p in paths_:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            try:
                st = f.stat()
                out[str(f)] = [st.st_size, st.st_mtime_ns, HASHES.file(f)]
            except FileNotFoundError:
                out[str(f)] = [-1, -1, ""]
    HASHES.save()
    return out


def _outputs_intact(key: str) -> bool:
    """Every file the run wrote is still there with the same contents. A new modification time
    alone (DVC re-linking a file from its cache, a copy) is checked by content, not trusted."""
    try:
        recorded = json.loads((OUTPUTS / f"{key}.json").read_text())
    except (OSError, ValueError):
        return False
    for name, print_ in recorded.items():
        size, mtime, sha = (list(print_) + [None])[:3]  # records without a hash: size and mtime only
        try:
            st = Path(name).stat()
        except OSError:
            return False
        if st.st_size != size or (st.st_mtime_ns != mtime and (sha is None or HASHES.file(Path(name)) != sha)):
            return False
    HASHES.save()
    return True


def _relocate(key: str) -> None:
    """Point a cache record at this project's result folder: Prefect stores the result's absolute
    path, so a copied or moved project (a second clone with its state folder, a test's copy) would
    otherwise look in the old place, or refuse a path outside its result storage."""
    record = KEYS / key
    try:
        meta = json.loads(record.read_text())
    except (OSError, ValueError):
        return
    stored = Path(meta.get("storage_key") or "")
    here = RESULTS.resolve() / stored.name
    if stored == here:
        return
    if here.is_file():
        write_json({**meta, "storage_key": str(here)}, record)
    else:
        record.unlink(missing_ok=True)


@dataclass
class ContentKeyed(CachePolicy):
    """Prefect cache policy: `task_key` of the call; a hit only while the outputs are intact."""

    fn: Callable | None = None
    outputs: tuple[str, ...] = field(default_factory=tuple)
    code: str = ""
    runtime: tuple[str, ...] = field(default_factory=tuple)

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        key = task_key(self.fn, inputs, outputs=self.outputs, code=self.code, runtime=self.runtime)
        if not _outputs_intact(key):  # outputs gone or rewritten since: forget the result, run again
            (KEYS / key).unlink(missing_ok=True)
        else:
            _relocate(key)
        return key


def cached_task(outputs: tuple[str, ...] = ("out",), runtime: tuple[str, ...] = (), **task_kwargs: Any):
    """@task with content-keyed caching, transient-I/O retries, and small persisted results.

    Args:
        outputs: names of the arguments that are output locations (hashed by path, not content).
        runtime: names of the arguments that change how the task runs but not what it writes
            (how often a checkpoint is written): left out of the key.
    """
    def decorate(fn: Callable) -> Any:
        code = code_digest(fn)  # here, at import, where the sources are

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            key = task_key(fn, inspect.signature(fn).bind(*args, **kwargs).arguments, outputs=outputs, code=code,
                           runtime=runtime)
            executed.append(fn.__name__)
            with recording_writes() as written:
                result = fn(*args, **kwargs)
            state_dir = STATE.resolve()
            mine = [p for p in written if not Path(p).resolve().is_relative_to(state_dir)]  # checkpoints aside
            write_json(_fingerprint(mine), OUTPUTS / f"{key}.json")
            return result

        policy = ContentKeyed(fn=fn, outputs=outputs, code=code, runtime=runtime).configure(key_storage=KEYS)
        return task(run, cache_policy=policy, persist_result=True, result_storage=RESULTS,
                    **{**IO_RETRIES, **task_kwargs})

    return decorate


def clear() -> None:
    """Forget every cached task result (the next run executes every task)."""
    import shutil

    shutil.rmtree(CACHE_DIR, ignore_errors=True)
    os.makedirs(CACHE_DIR, exist_ok=True)
