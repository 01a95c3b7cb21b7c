from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pytest

from lesion_ml.io import FileHashes, atomic_path, image_store_digest, path_digest, write_json


def test_write_json_turns_nan_into_null_and_numpy_into_numbers(tmp_path):
    out = write_json({"auc": float("nan"), "n": np.int64(3), "x": [np.float32(0.5), float("inf")]}, tmp_path / "m.json")
    assert json.loads(out.read_text()) == {"auc": None, "n": 3, "x": [0.5, None]}


def test_atomic_path_leaves_nothing_behind_on_error(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def _same_size_rewrite(path, data: bytes) -> None:
    """Rewrite `path` with other bytes of the same length and set its times back."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_file_hash_follows_the_contents_even_when_size_and_mtime_are_kept(tmp_path, monkeypatch):
    f = tmp_path / "images.hdf5"
    f.write_bytes(b"a" * 1000)
    hashes = FileHashes()
    first = hashes.file(f)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    _same_size_rewrite(f, b"b" * 1000)  # at once: a file this fresh is not memoised
    assert hashes.file(f) == hashlib.sha256(b"b" * 1000).hexdigest() != first
    monkeypatch.setattr(FileHashes, "settle_ns", 0)  # memoise at once
    assert hashes.file(f) == hashlib.sha256(b"b" * 1000).hexdigest() and len(hashes.memo) == 1
    time.sleep(0.05)  # past the filesystem's timestamp tick
    _same_size_rewrite(f, b"c" * 1000)  # the memo's stamp has another ctime now
    assert hashes.file(f) == hashlib.sha256(b"c" * 1000).hexdigest()


def test_file_hash_reads_an_unchanged_file_once_and_keeps_the_memo_on_disk(tmp_path, monkeypatch):
    import lesion_ml.io as io_mod

    monkeypatch.setattr(FileHashes, "settle_ns", 0)  # memoise at once (else only after a second)
    f, memo = tmp_path / "images.hdf5", tmp_path / "memo" / "file-hashes.json"
    f.write_bytes(b"x" * 5000)
    reads = []
    real_open = open
    monkeypatch.setattr(io_mod, "open", lambda p, *a, **k: reads.append(p) or real_open(p, *a, **k), raising=False)
    hashes = FileHashes(memo)
    digest = hashes.file(f)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: read again, hashes the same
    assert [hashes.file(f) for _ in range(3)] == [digest] * 3 and len(reads) == 2
    hashes.save()
    assert FileHashes(memo).file(f) == digest and len(reads) == 2  # another process: from the memo file


def test_path_digest_is_by_contents_not_by_name(tmp_path):
    a, b = tmp_path / "a" / "x.bin", tmp_path / "b" / "y.bin"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"same")
    assert path_digest(a) == path_digest(b) != path_digest(tmp_path / "nothing") == "missing"
    assert path_digest(a.parent).startswith("dir:")
    assert image_store_digest(a, None, {}) == image_store_digest(b, None, {})
    assert image_store_digest(None, a.parent, {"i1": "x.bin"}) == image_store_digest(None, b.parent, {"i1": "y.bin"})
    _same_size_rewrite(b, b"diff")
    assert image_store_digest(a, None, {}) != image_store_digest(b, None, {})
    assert image_store_digest(None, a.parent, {"i1": "x.bin"}) != image_store_digest(None, b.parent, {"i1": "y.bin"})
