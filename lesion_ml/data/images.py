"""The image store: one interface, ``get(image_id) -> RGB uint8 array``, over an ISIC 2024
HDF5 file (keys = isic_id, values = encoded JPEG bytes) or a folder of image files.

Reads stream: the HDF5 handle is opened lazily, once per process (so DataLoader workers
each get their own), and only the requested image's bytes are read.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np

from lesion_ml.errors import BadImageError
from lesion_ml.io import TRANSIENT_ERRNOS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame header, walking the marker segments; None
    when the bytes are not a JPEG or the header cannot be found. A few microseconds: no decoder."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF:
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            i += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _reduction(data: bytes, min_side: int) -> int:
    """The largest JPEG decode scale 1/r (r in 1, 2, 4, 8) that keeps the short side >= `min_side`.

    Reads only the JPEG header; other formats decode at full size.
    """
    size = jpeg_size(data)
    if size is None or min(size) == 0:
        return 1  # the decoder below reports any problem
    short = min(size)
    return next((r for r in (8, 4, 2) if short // r >= min_side), 1)


def decode_image(data: bytes, where: object, min_side: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array of shape (H, W, 3).

    Grayscale becomes 3 channels, alpha is dropped, 16-bit is scaled to 8-bit. With `min_side`,
    a large JPEG is decoded at 1/2, 1/4 or 1/8 scale (in the DCT, so memory and time shrink
    with it) as long as its short side stays at least `min_side` pixels: a 6000 x 4000
    original for a 128 px model decodes to 750 x 500.

    Raises:
        BadImageError: the bytes are not a decodable image (`where`, whose str() names the source).
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    flag = _REDUCED.get(_reduction(data, min_side), cv2.IMREAD_COLOR) if min_side else cv2.IMREAD_COLOR
    img = cv2.imdecode(buf, flag) if buf.size else None
    if img is None or img.size == 0:
        raise BadImageError(f"{where}: cannot decode image ({len(data)} bytes); expected JPEG or PNG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def check_image_bytes(data: bytes, where: object, mode: str = "header") -> None:
    """Cheap integrity check without decoding ("header") or a full decode ("decode").

    "header" checks the JPEG start/end markers or the PNG signature and IEND chunk, which
    catches empty, truncated and non-image files at the cost of reading the bytes only.
    """
    if mode == "none":
        return
    if mode == "decode":
        decode_image(data, where)
        return
    tail = data.rstrip(b"\x00")[-12:]
    if data[:3] == b"\xff\xd8\xff":
        if not tail.endswith(b"\xff\xd9"):
            raise BadImageError(f"{where}: truncated JPEG (no end-of-image marker, {len(data)} bytes)")
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in tail:
            raise BadImageError(f"{where}: truncated PNG (no IEND chunk, {len(data)} bytes)")
    else:
        decode_image(data, where)  # other formats: fall back to decoding


def _direct_kind(tid: h5py.h5t.TypeID) -> str | None:
    """"S" for a fixed-length string type, "u" for an unsigned integer one (as numpy's dtype.kind),
    None for any other type or a zero size: the types whose stored bytes are the value's bytes.
    Asked of the HDF5 type itself: building the numpy dtype (`DatasetID.dtype`) costs about 20 us,
    a third of locating an image."""
    if tid.get_size() == 0:
        return None
    cls = tid.get_class()
    if cls == h5py.h5t.STRING:
        return None if tid.is_variable_str() else "S"
    if cls == h5py.h5t.INTEGER and tid.get_sign() == h5py.h5t.SGN_NONE:
        return "u"
    return None


@dataclass
class ImageStore:
    """Images by id, from an HDF5 file, a folder (id -> relative file), or both.

    The HDF5 file wins where both hold an id. Use `from_manifest`/`to_manifest` to pass a
    store between processes as a small JSON-able dict.
    """

    hdf5: Path | None = None
    root: Path | None = None
    files: Mapping[str, str] = field(default_factory=dict)
    _h5: Any = field(default=None, init=False, repr=False)
    _pid: int = field(default=-1, init=False, repr=False)
    _fd: int = field(default=-1, init=False, repr=False)
    _extents: dict = field(default_factory=dict, init=False, repr=False)
    _ident: tuple = field(default=(), init=False, repr=False)  # the file's (device, inode, size, mtime)

    def _handle(self) -> h5py.File | None:
        if self.hdf5 is None:
            return None
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.hdf5, "r")
            self._fd = os.open(self.hdf5, os.O_RDONLY)  # the same file, for direct reads
            self._pid = os.getpid()
            st = os.fstat(self._fd)
            ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if ident != self._ident:  # another file under this path: the extents found are void
                self._extents, self._ident = {}, ident
        return self._h5

    def _extent(self, h5: h5py.File, image_id: str) -> tuple[int, int, bool] | None:
        """(offset, size, is-text) of a contiguous fixed-size dataset (as ISIC 2024's |S<n>
        scalars), found once and kept; None for an absent id or a dataset h5py must read."""
        extent = self._extents.get(image_id)
        if extent is not None:
            return extent
        try:
            dsid = h5py.h5d.open(h5.id, image_id.encode())
        except (KeyError, ValueError, TypeError):
            return None
        offset = dsid.get_offset()
        if offset is None:  # compact or chunked
            return None
        kind = _direct_kind(dsid.get_type())
        if kind is None:
            return None
        extent = self._extents[image_id] = (offset, dsid.get_storage_size(), kind == "S")
        return extent

    def _read_hdf5(self, h5: h5py.File, image_id: str) -> bytes | None:
        """One dataset's bytes. A contiguous fixed-size dataset is read straight from the file at
        its extent (a few microseconds; h5py's high-level read costs about 0.3 ms). Anything
        else (compact, chunked or variable-length) goes through h5py."""
        extent = self._extent(h5, image_id)
        if extent is None:
            dataset = h5.get(image_id)  # absent (None), or not a plain dataset: h5py decides
            return None if dataset is None else _dataset_bytes(dataset[()])
        offset, size, text = extent
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise BadImageError(f"{self.hdf5}[{image_id!r}]: the file ends inside the image ({len(data)} of "
                                f"{size} bytes); is it truncated?")
        return data.rstrip(b"\x00") if text else data  # as numpy reads a fixed-length bytes value

    def index(self, image_ids: Iterable[str]) -> list[str]:
        """Find the HDF5 extents of `image_ids` now, in this process (about 30 us an image), so
        that DataLoader workers forked afterwards inherit them. A worker that finds an extent
        itself pays several times that on its fresh handle, once per image and per worker: it
        held a 2-worker loader's first epoch to 1.2x the rate of one process. Returns the ids
        this store neither located in its HDF5 file nor maps to a folder file."""
        h5 = self._handle()
        return [i for i in image_ids if (h5 is None or self._extent(h5, i) is None) and i not in self.files]

    def ids(self) -> set[str]:
        """Every image id the store can serve."""
        out = set(self.files)
        h5 = self._handle()
        if h5 is not None:
            out.update(h5.keys())
        return out

    def where(self, image_id: str) -> str:
        h5 = self._handle()
        if h5 is not None and image_id in h5:
            return f"{self.hdf5}[{image_id!r}]"
        if image_id in self.files:
            return str(Path(self.root or ".") / self.files[image_id])
        return f"image {image_id!r}"

    def lookup(self, image_id: str) -> bytes | None:
        """The encoded bytes of one image, or None when the store does not hold the id (one
        HDF5 lookup; a folder file that cannot be read is a BadImageError)."""
        h5 = self._handle()
        if h5 is not None:
            data = self._read_hdf5(h5, image_id)
            if data is not None:
                return data
        if image_id in self.files:
            path = Path(self.root or ".") / self.files[image_id]
            try:
                return path.read_bytes()
            except OSError as err:
                if err.errno in TRANSIENT_ERRNOS:
                    raise  # a flaky share: the task is retried (tasks/cache.py IO_RETRIES)
                raise BadImageError(f"{path}: cannot read image {image_id!r}: {err.strerror}") from None
        return None

    def read_bytes(self, image_id: str) -> bytes:
        """The encoded bytes of one image.

        Raises:
            BadImageError: the id is in neither the HDF5 file nor the folder mapping.
        """
        data = self.lookup(image_id)
        if data is None:
            raise BadImageError(f"image {image_id!r} is not in the image store "
                                f"(hdf5={self.hdf5}, folder={self.root})")
        return data

    def get(self, image_id: str, min_side: int | None = None) -> np.ndarray:
        """The image as an RGB uint8 array of shape (H, W, 3); see `decode_image` for `min_side`."""
        return decode_image(self.read_bytes(image_id), Location(self, image_id), min_side)

    def iter_bytes(self, image_ids: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        for image_id in image_ids:
            yield image_id, self.read_bytes(image_id)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
            if self._pid == os.getpid():
                os.close(self._fd)
            self._fd, self._extents = -1, {}

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader workers; the extents travel
        state = self.__dict__.copy()
        state["_h5"], state["_pid"], state["_fd"] = None, -1, -1
        return state

    def to_manifest(self, relative_to: Path | None = None) -> dict[str, Any]:
        def rel(p: Path | None) -> str | None:
            if p is None:
                return None
            return os.path.relpath(p, relative_to) if relative_to else str(p)

        return {"hdf5": rel(self.hdf5), "root": rel(self.root), "files": dict(self.files)}

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], base: Path | None = None) -> ImageStore:
        def path(p: str | None) -> Path | None:
            if p is None:
                return None
            return (base / p) if base is not None and not Path(p).is_absolute() else Path(p)

        return cls(hdf5=path(manifest.get("hdf5")), root=path(manifest.get("root")),
                   files=dict(manifest.get("files") or {}))


@dataclass
class MultiStore:
    """Several stores behind one `get`: the first that holds an id serves it (e.g. the data
    set's images, then the minority set's augmented copies)."""

    stores: list[ImageStore]

    def _find(self, image_id: str) -> tuple[ImageStore, bytes]:
        for store in self.stores:
            data = store.lookup(image_id)
            if data is not None:
                return store, data
        raise BadImageError(f"image {image_id!r} is in none of the image stores "
                            f"({[str(s.hdf5 or s.root) for s in self.stores]})")

    def read_bytes(self, image_id: str) -> bytes:
        return self._find(image_id)[1]

    def index(self, image_ids: Iterable[str]) -> list[str]:
        """Locate each id in the first store that holds it (later stores see only the rest);
        returns the ids none of them holds."""
        ids = list(image_ids)
        for store in self.stores:
            ids = store.index(ids) if ids else ids
        return ids

    def close(self) -> None:
        for store in self.stores:
            store.close()

    def get(self, image_id: str, min_side: int | None = None) -> np.ndarray:
        store, data = self._find(image_id)
        return decode_image(data, Location(store, image_id), min_side)


@contextmanager
def open_store(manifest: Mapping[str, Any], extra_hdf5: Path | None = None) -> Iterator[ImageStore | MultiStore]:
    """The image store of `manifest` (data/interim/images.json), followed by the HDF5 file
    `extra_hdf5` when given (the minority set's copies); closed on exit."""
    store: ImageStore | MultiStore = ImageStore.from_manifest(manifest)
    if extra_hdf5 is not None:
        store = MultiStore([store, ImageStore(hdf5=extra_hdf5)])
    try:
        yield store
    finally:
        store.close()


class Location:
    """An image's location for error messages, worked out only when a message needs it."""

    def __init__(self, store: ImageStore, image_id: str):
        self.store, self.image_id = store, image_id

    def __str__(self) -> str:
        return self.store.where(self.image_id)


def _dataset_bytes(value: Any) -> bytes:
    """Bytes of one HDF5 value: ISIC stores a fixed-length bytes scalar (|S), others uint8 arrays."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (np.ndarray, np.void, np.bytes_)):
        return value.tobytes()
    raise BadImageError(f"HDF5 value of type {type(value).__name__} is not encoded image bytes")
