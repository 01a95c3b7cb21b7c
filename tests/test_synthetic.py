from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY

from lesion_ml.data.images import ImageStore
from lesion_ml.data.schema import ISIC2024_COLUMNS
from lesion_ml.data.synthetic import generate_synthetic


def _kind(dtype) -> str:
    if pd.api.types.is_string_dtype(dtype) or dtype == object:
        return "object"
    return str(dtype)


def test_matches_isic2024_schema_names_and_dtypes(tiny_demo):
    meta = pd.read_csv(tiny_demo / "train-metadata.csv")
    assert list(meta.columns) == list(ISIC2024_COLUMNS)
    assert {c: _kind(meta[c].dtype) for c in meta.columns} == ISIC2024_COLUMNS


def test_every_row_has_a_decodable_tile_and_ids_match(tiny_demo):
    meta = pd.read_csv(tiny_demo / "train-metadata.csv")
    with h5py.File(tiny_demo / "train-image.hdf5") as f:
        assert sorted(f.keys()) == sorted(meta["isic_id"])
    store = ImageStore(hdf5=tiny_demo / "train-image.hdf5")
    img = store.get(meta["isic_id"][0])
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert TINY.tile_px[0] <= img.shape[0] <= TINY.tile_px[1]


def test_patients_have_several_lesions_and_configured_fraction(tiny_demo):
    meta = pd.read_csv(tiny_demo / "train-metadata.csv")
    per_patient = meta.groupby("patient_id").size()
    assert meta["patient_id"].nunique() == TINY.n_patients
    assert per_patient.between(*TINY.lesions_per_patient).all()
    assert meta["target"].sum() == round(TINY.malignant_fraction * len(meta))
    assert set(meta["target"]) == {0, 1}
    # label-derived columns agree with the label, as in the real data
    assert (meta.loc[meta["target"] == 1, "iddx_1"] == "Malignant").all()
    assert (meta.loc[meta["target"] == 0, "iddx_full"] == "Benign").all()


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny_demo):
    generate_synthetic(tmp_path / "a", TINY)
    assert (tmp_path / "a/train-metadata.csv").read_bytes() == (tiny_demo / "train-metadata.csv").read_bytes()
    a, b = ImageStore(hdf5=tmp_path / "a/train-image.hdf5"), ImageStore(hdf5=tiny_demo / "train-image.hdf5")
    first = pd.read_csv(tiny_demo / "train-metadata.csv")["isic_id"][0]
    assert a.read_bytes(first) == b.read_bytes(first)
    generate_synthetic(tmp_path / "c", TINY.model_copy(update={"seed": 8}))
    assert (tmp_path / "c/train-metadata.csv").read_bytes() != (tiny_demo / "train-metadata.csv").read_bytes()


def test_malignant_lesions_are_drawn_larger_and_more_irregular(tmp_path):
    cfg = TINY.model_copy(update={"n_patients": 40, "seed": 3})
    generate_synthetic(tmp_path, cfg)
    meta = pd.read_csv(tmp_path / "train-metadata.csv")
    means = meta.groupby("target")[["clin_size_long_diam_mm", "tbp_lv_norm_color", "tbp_lv_symm_2axis"]].mean()
    assert (means.loc[1] > means.loc[0]).all(), means
    # the measured area agrees with the drawn tile: dark pixels cover about tbp_lv_areaMM2
    store = ImageStore(hdf5=tmp_path / "train-image.hdf5")
    row = meta.sort_values("tbp_lv_areaMM2").iloc[-1]
    img = store.get(row["isic_id"]).astype(float).mean(2)
    ppm = img.shape[0] / 15.0
    dark = (img < img[:3].mean() - 12).sum() / ppm**2
    assert 0.4 * row["tbp_lv_areaMM2"] < dark < 2.0 * row["tbp_lv_areaMM2"]


def test_exact_sizes_and_identical_files_whatever_the_workers_and_chunks(tmp_path, monkeypatch):
    """A fixed total of lesions and malignant ones, drawn heavy-tailed over patients; streaming in
    chunks over 2 processes writes the same bytes as one process writing one chunk."""
    import lesion_ml.data.synthetic as synthetic

    cfg = TINY.model_copy(update={"n_patients": 9, "n_lesions": 120, "n_malignant": 5, "seed": 11})
    generate_synthetic(tmp_path / "one", cfg)
    monkeypatch.setattr(synthetic, "CHUNK_LESIONS", 7)  # many chunks, some of one big patient
    generate_synthetic(tmp_path / "two", cfg, workers=2)
    for name in ("train-metadata.csv", "train-image.hdf5"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["train-image.hdf5", "train-metadata.csv"]
    meta = pd.read_csv(tmp_path / "two/train-metadata.csv")
    assert len(meta) == 120 and meta["target"].sum() == 5 and meta["patient_id"].nunique() == 9
    assert meta.groupby("patient_id").size().max() > 120 / 9 * 1.5  # heavy-tailed, not uniform
    assert {c: _kind(meta[c].dtype) for c in meta.columns} == ISIC2024_COLUMNS
    with h5py.File(tmp_path / "two/train-image.hdf5") as f:
        assert sorted(f.keys()) == sorted(meta["isic_id"])


def test_cli_synth_names_its_flags_in_errors(tmp_path, capsys):
    from lesion_ml.app.cli import main

    assert main(["synth", "--out", str(tmp_path / "a"), "--patients", "10", "--lesions", "5"]) == 2
    err = capsys.readouterr().err
    assert "--lesions (5) must be at least --patients (10)" in err and "n_lesions" not in err
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    assert main(["synth", "--out", str(tmp_path / "b"), "--patients", "4", "--lesions", "30",
                 "--malignant", "2"]) == 0
    meta = pd.read_csv(tmp_path / "b/train-metadata.csv")
    assert len(meta) == 30 and meta["target"].sum() == 2 and "wrote" in capsys.readouterr().out


def test_direct_hdf5_reads_equal_h5py_for_every_layout(tmp_path):
    """Contiguous fixed-size datasets are read at their file offset; compact, chunked and other
    layouts through h5py; every way gives the bytes h5py gives, and missing ids give None."""
    import os

    rng = np.random.default_rng(0)
    blobs = {f"img{i}": b"\xff\xd8\xff" + rng.integers(1, 255, 300 + 50 * i, dtype=np.uint8).tobytes() + b"\xff\xd9"
             for i in range(6)}
    path = tmp_path / "mixed.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("img0", data=np.bytes_(blobs["img0"]))  # ISIC 2024: a |S<n> scalar
        f.create_dataset("img1", data=np.frombuffer(blobs["img1"], np.uint8))  # a uint8 array
        f.create_dataset("img2", data=np.frombuffer(blobs["img2"], np.uint8), chunks=(64,), compression="gzip")
        f.create_dataset("img3", data=np.array(blobs["img3"] + b"\x00\x00", dtype=f"S{len(blobs['img3']) + 2}"))
        f.create_dataset("img4", data=blobs["img4"], dtype=h5py.string_dtype("ascii"))  # variable length
        f.create_dataset("img5", data=np.frombuffer(blobs["img5"], np.int8))  # signed: numpy decides
        f.create_group("folder")
    store = ImageStore(hdf5=path)
    for _ in range(2):  # the first read finds the extent, the second reuses it
        for key, blob in blobs.items():
            assert store.read_bytes(key) == blob, key
    assert set(store._extents) == {"img0", "img1", "img3"}  # contiguous ones only, chunked via h5py
    assert store.lookup("absent") is None
    with h5py.File(path) as f:
        assert all(store.read_bytes(k) == bytes(np.asarray(f[k][()]).tobytes()).rstrip(b"\x00") for k in blobs)
    fd = store._fd
    store.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with the store


def _blob_file(path, blobs: dict[str, bytes], pad: int = 0) -> None:
    with h5py.File(path, "w") as f:
        if pad:  # shifts every later dataset's offset in the file
            f.create_dataset("padding", data=np.zeros(pad, np.uint8))
        for key, blob in blobs.items():
            f.create_dataset(key, data=np.bytes_(blob))


def test_extents_travel_to_workers_but_not_to_another_file_under_the_same_path(tmp_path):
    """Extents found before a pickle (a DataLoader worker's copy) are reused after it; once
    another file sits under the same path, they are dropped, not read at stale offsets."""
    import pickle

    rng = np.random.default_rng(1)
    blobs = {f"img{i}": b"\xff\xd8" + rng.integers(1, 255, 200, dtype=np.uint8).tobytes() for i in range(3)}
    path = tmp_path / "a.hdf5"
    _blob_file(path, blobs)
    store = ImageStore(hdf5=path)
    store.index([*blobs, "absent"])
    assert set(store._extents) == set(blobs)
    copy = pickle.loads(pickle.dumps(store))
    assert copy._extents == store._extents and copy._h5 is None
    assert all(copy.read_bytes(k) == v for k, v in blobs.items())
    other = {k: bytes(reversed(v)) for k, v in blobs.items()}
    _blob_file(tmp_path / "b.hdf5", other, pad=5000)
    (tmp_path / "b.hdf5").replace(path)
    copy = pickle.loads(pickle.dumps(store))
    assert all(copy.read_bytes(k) == v for k, v in other.items())
    assert {k: e[0] for k, e in copy._extents.items()} != {k: e[0] for k, e in store._extents.items()}


class _SeenExtents(torch.utils.data.Dataset):
    """How many images the worker's store has located when it serves its first sample."""

    def __init__(self, images):
        self.images = images

    def index_store(self):
        self.images.index_store()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return len(self.images.store._extents)


def test_loader_workers_inherit_the_image_locations(tiny_demo):
    from lesion_ml.config import DataConfig
    from lesion_ml.data.sources import ingest
    from lesion_ml.image.train import LesionImages, create_transforms, make_loader

    store = ingest(DataConfig(source="isic2024", path=str(tiny_demo)), tiny_demo).store
    store.close()  # nothing located yet
    ids = sorted(store.ids())[:20]
    images = LesionImages(store, ids, None, create_transforms(32, False))
    seen = torch.cat(list(make_loader(_SeenExtents(images), 4, 1, torch.device("cpu")))).tolist()
    assert seen == [len(ids)] * len(ids)
    assert set(store._extents) == set(ids)
    with_none = torch.cat(list(make_loader(_SeenExtents(images), 4, 0, torch.device("cpu")))).tolist()
    assert with_none == [len(ids)] * len(ids)  # located by the first loader, in this process


def test_a_multistore_locates_each_image_in_the_first_store_that_holds_it(tmp_path):
    """Later stores are asked only for what earlier ones lack (the minority set's HDF5 file is
    not searched for every image of the data set); what none holds comes back."""
    from lesion_ml.data.images import MultiStore

    main, extra = {f"img{i}": b"\xff\xd8" + bytes([i + 1]) * 50 for i in range(4)}, {"copy0": b"\xff\xd8" + b"\x07" * 40}
    _blob_file(tmp_path / "main.hdf5", main)
    _blob_file(tmp_path / "extra.hdf5", extra)
    first, second = ImageStore(hdf5=tmp_path / "main.hdf5"), ImageStore(hdf5=tmp_path / "extra.hdf5")
    asked = []
    real = second.index
    second.index = lambda ids: (asked.extend(ids), real(ids))[1]
    assert MultiStore([first, second]).index([*main, "copy0", "absent"]) == ["absent"]
    assert asked == ["copy0", "absent"] and set(first._extents) == set(main) and set(second._extents) == {"copy0"}
