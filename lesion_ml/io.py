"""Atomic file output: write to a temporary sibling, then rename over the target.

An interrupted run therefore never leaves a half-written artefact that a later stage trusts.
A folder written as a whole (the model bundle, a recalibrated copy of it) is filled beside its
destination and swapped in the same way (`atomic_folder`, `replace_folder`): the one place
that replaces folders.

Also the one content fingerprint of input files (`path_digest`, `image_store_digest`), memoised
in `FILE_HASHES`: the key scheme of the pipeline's task cache (tasks/cache.py) and of the image
models' resumable checkpoints (lesion_ml.image.train).
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from lesion_ml.errors import DiskFullError

_UMASK = os.umask(0)
os.umask(_UMASK)


_WRITTEN: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("lesion_ml_written", default=None)


@contextlib.contextmanager
def recording_writes() -> Iterator[list[Path]]:
    """Collect every path written through this module (and `record_written`) inside the block,
    in order: a caller can then fingerprint exactly what a step produced."""
    written: list[Path] = []
    token = _WRITTEN.set(written)
    try:
        yield written
    finally:
        _WRITTEN.reset(token)


def record_written(path: Path | str) -> None:
    """Note an output written by other means (a folder renamed into place) for `recording_writes`."""
    written = _WRITTEN.get()
    if written is not None:
        written.append(Path(path))


def fsync_path(path: Path | str) -> None:
    """Flush a file's (or a folder's entries') data to the disk, so that a rename that follows
    survives a power loss, not only a crash of the process."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_folder(tmp: Path | str, out: Path | str) -> Path:
    """Put the finished folder `tmp` (a sibling of `out`) in place of `out`, atomically: the files
    are flushed to the disk first, an existing `out` is moved aside and removed only once `tmp` is
    in its place. A reader sees the old folder or the new one, never a mixture."""
    tmp, out = Path(tmp), Path(out)
    for f in tmp.rglob("*"):
        if f.is_file() and not f.is_symlink():
            fsync_path(f)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    fsync_path(out.parent)
    record_written(out)
    return out


@contextlib.contextmanager
def atomic_folder(out: Path | str) -> Iterator[Path]:
    """Yield a new, empty folder beside `out` to fill; when the block ends without an exception,
    put it in place of `out` with `replace_folder` (files flushed, then renamed over it). On any
    exception the temporary folder is removed and `out` is left untouched.

    An interrupted writer therefore leaves the previous folder (or nothing), never a partial one:
        with atomic_folder(dest) as tmp:
            (tmp / "manifest.json").write_text(...)
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; give the folder the usual permissions
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success flush it to the disk and rename it to
    `target` (then flush the folder's entry), so the result survives a crash and a power loss.

    On any exception the temporary file is removed and `target` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        fsync_path(tmp_path)
        os.replace(tmp_path, target)
        fsync_path(target.parent)
        record_written(target)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(target.parent).free
        raise DiskFullError(errno.ENOSPC, f"no space left on the device while writing {target} "
                            f"({free / 2**20:.1f} MiB free in {target.parent}); nothing was written: free "
                            "some space and rerun") from err
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(obj: Any, target: Path | str) -> Path:
    """Write `obj` as indented, key-sorted JSON, atomically; NaN and infinities become null
    (they are not JSON, and a metric undefined for a one-class fold is NaN)."""
    text = json.dumps(json_ready(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    with atomic_path(target) as tmp:
        tmp.write_text(text + "\n")
    return Path(target)


def json_ready(value: Any) -> Any:
    """`value` with NaN and infinities as None and numpy scalars as Python numbers, in nested dicts,
    lists and tuples (tuples become lists): what `json.dumps(..., allow_nan=False)` accepts."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_text(text: str, target: Path | str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_parquet(df: pd.DataFrame, target: Path | str) -> Path:
    """Write a DataFrame to Parquet atomically (index dropped)."""
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(target)


def save_torch(obj: Any, target: Path | str) -> Path:
    """torch.save, atomically. The bytes are built in memory and written by Python, so a full disk
    is an OSError (DiskFullError) rather than torch's "PytorchStreamWriter failed"."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(target) as tmp:
        tmp.write_bytes(buf.getbuffer())
    return Path(target)


def remove_stale(folder: Path | str, keep: Iterable[str]) -> list[str]:
    """Delete every file directly in `folder` whose name is not in `keep` (what the current
    settings write there); return the deleted names, sorted. A folder that does not exist is left
    alone.

    A stage whose outputs persist between runs (DVC `persist: true`, for resumability) calls it
    before anything reads the folder, so files of folds or seeds that no longer exist are neither
    read back nor committed to the DVC cache.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    keep = set(keep)
    gone = sorted(f.name for f in folder.iterdir() if f.is_file() and f.name not in keep)
    for name in gone:
        (folder / name).unlink()
    return gone


def weights_bytes(state: Mapping[str, Any]) -> bytes:
    """A model's state dict as safetensors bytes: tensors only (copied to the CPU, contiguous),
    no pickle, so a reader never runs code from the file."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in state.items()})


def save_weights(state: Mapping[str, Any], target: Path | str) -> Path:
    """`weights_bytes` of `state`, written atomically to `target` (a .safetensors file)."""
    data = weights_bytes(state)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def load_weights(source: Path | str | bytes) -> dict[str, Any]:
    """The tensors of a safetensors file (or its bytes), on the CPU."""
    from safetensors.torch import load, load_file

    return load(source) if isinstance(source, bytes) else load_file(str(source), device="cpu")


TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE,
                              errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH})


def is_transient(exc: BaseException | None) -> bool:
    """True for an OSError whose errno says that trying again may succeed."""
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def write_csv(df: pd.DataFrame, target: Path | str) -> Path:
    """Write a DataFrame to CSV atomically (index dropped)."""
    with atomic_path(target) as tmp:
        df.to_csv(tmp, index=False)
    return Path(target)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- content fingerprints ---------------------------------------------------------------------
class FileHashes:
    """sha256 of files' contents, memoised by (absolute path, size, mtime_ns, ctime_ns, inode).

    An unchanged file costs one stat; a new stamp costs one read of the whole file. The ctime and
    inode are in the stamp because a rewrite can keep the size and the modification time (os.utime
    back, `cp -p`, a tool that restores it) but not those: the kernel sets ctime to "now" on every
    write, utime and rename into place, and nobody can set it back. (A chmod or a new hard link
    changes ctime too: the file is read once more and hashes the same.) Timestamps have ticks, so
    a file changed less than `settle_ns` before it is hashed is not memoised (git's "racy" entries):
    a rewrite within the same tick would keep its stamp.

    The memo lives in memory; with `memo_path` set (tasks/cache.py sets a file in the task
    cache's folder) it is loaded from that file on first use and `save` writes it back, so a
    file is read once across runs, not once per process.
    """

    settle_ns = 1_000_000_000

    def __init__(self, memo_path: Path | str | None = None, keep: int = 200_000):
        self.memo_path = Path(memo_path) if memo_path is not None else None
        self.keep = keep
        self.memo: dict[str, str] | None = None
        self.dirty = False

    def _load(self) -> dict[str, str]:
        if self.memo is None:
            self.memo = {}
            if self.memo_path is not None:
                try:
                    self.memo = dict(json.loads(self.memo_path.read_text()))
                except (OSError, ValueError, TypeError):
                    self.memo = {}
        return self.memo

    def use_memo_file(self, path: Path | str) -> None:
        """Load the memo from `path` (on next use) and save it there; stamps already hashed in
        memory are kept."""
        known = self.memo or {}
        self.memo_path, self.memo = Path(path), None
        if known:
            memo = self._load()
            memo.update({k: v for k, v in known.items() if k not in memo})
            self.dirty = True

    def file(self, path: Path | str) -> str:
        """The hex sha256 of the file's contents."""
        path = Path(path)
        st = path.stat()
        stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
        memo = self._load()
        digest = memo.get(stamp)
        if digest is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            digest = h.hexdigest()
            if time.time_ns() - st.st_ctime_ns >= self.settle_ns:
                memo[stamp] = digest
                self.dirty = True
        return digest

    def save(self) -> None:
        """Write the memo to `memo_path` (the newest `keep` stamps) if it has new ones."""
        if self.dirty and self.memo is not None and self.memo_path is not None:
            write_json(dict(list(self.memo.items())[-self.keep:]), self.memo_path)
            self.dirty = False


#: The process's file-hash memo, shared by the task cache and the checkpoint keys.
FILE_HASHES = FileHashes()


def path_digest(path: Path | str) -> str:
    """What a path holds, never its name: "file:<sha256>" of a file's contents, "dir:<sha256>"
    of every file below a folder (relative names and contents), "missing" for nothing there."""
    path = Path(path)
    if path.is_file():
        return "file:" + FILE_HASHES.file(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path)}={FILE_HASHES.file(f)}\n".encode())
        return "dir:" + h.hexdigest()
    return "missing"


def image_store_digest(hdf5: Path | str | None, root: Path | str | None, files: Mapping[str, str]) -> str:
    """The images an image store serves, by content: its HDF5 file and each file of its folder
    mapping (image id -> path under `root`), as `path_digest`s; the paths' names are not in it."""
    h = hashlib.sha256(f"hdf5={path_digest(hdf5) if hdf5 else None}\n".encode())
    base = Path(root) if root else Path(".")
    for image_id, rel in sorted(files.items()):
        h.update(f"{image_id}={path_digest(base / rel)}\n".encode())
    return "images:" + h.hexdigest()
