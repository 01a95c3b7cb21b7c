"""Atomic file output: write to a temporary sibling, then rename over the target.

An interrupted run therefore never leaves a half-written artefact that a later stage trusts.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it to `target`.

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
        os.replace(tmp_path, target)
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
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    with atomic_path(target) as tmp:
        tmp.write_text(text + "\n")
    return Path(target)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
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


TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE,
                              errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH})


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
