"""The loaders' batches: channels-last collation and the shared batch slots of loader workers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from lesion_ml.config import DataConfig
from lesion_ml.data.sources import ingest
from lesion_ml.image.augment import create_transforms
from lesion_ml.image.balance import EpochSampler
from lesion_ml.image.loaders import BatchRing, LesionImages, RingLoader, SeededSampler, collate_samples, make_loader

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images(tiny_demo):
    store = ingest(DataConfig(source="isic2024", path=str(tiny_demo)), tiny_demo).store
    ids = sorted(store.ids())[:30]
    labels = (np.arange(len(ids)) % 3 == 0).astype(np.float32)
    meta = np.random.default_rng(0).normal(size=(len(ids), 4)).astype(np.float32)
    return store, ids, labels, meta


def _epochs(store, ids, labels, meta, workers: int, n_epochs: int = 3) -> tuple[object, list[list[dict]]]:
    """Every batch of `n_epochs` seeded training passes (batches kept: the slots must not alias them)."""
    sampler = SeededSampler(EpochSampler(labels, "none", 0.0, 3), 3)
    ds = LesionImages(store, ids, labels, create_transforms(48, True), meta=meta, min_side=48)
    loader = make_loader(ds, 4, workers, CPU, sampler)
    out = []
    for epoch in range(n_epochs):
        sampler.set_epoch(epoch)
        out.append(list(loader))
    return loader, out


def test_batches_are_channels_last_with_the_values_torch_collates():
    rng = np.random.default_rng(1)
    samples = [{"image": torch.from_numpy(rng.integers(0, 256, (16, 12, 3), dtype=np.uint8).transpose(2, 0, 1)),
                "label": torch.tensor(float(i % 2)), "meta": torch.arange(3, dtype=torch.float32) + i,
                "error": "" if i else "unreadable"} for i in range(5)]
    ours, torchs = collate_samples(samples), default_collate(samples)
    assert ours.keys() == torchs.keys()
    assert ours.pop("error") == torchs.pop("error") == ["unreadable", "", "", "", ""]  # other keys: as torch does
    for k in ours:
        assert torch.equal(ours[k], torchs[k]) and ours[k].dtype == torchs[k].dtype
    assert ours["image"].shape == (5, 3, 16, 12)
    assert ours["image"].is_contiguous(memory_format=torch.channels_last)
    assert collate_samples([1, 2, 3]).tolist() == [1, 2, 3]  # anything else: as torch collates it


def test_workers_hand_over_the_same_batches_through_the_slots(images):
    """2 workers (through the shared slots) give every batch of 0 workers, byte for byte and in
    order, over three epochs and a short last batch; batches held by the caller stay intact while
    the workers reuse their slots (each worker writes 12 batches into its 4 slots)."""
    loader, with_workers = _epochs(*images, workers=2)
    assert isinstance(loader, RingLoader)
    _, in_process = _epochs(*images, workers=0)
    assert loader.ring.slots == 4
    assert [len(e) for e in with_workers] == [8, 8, 8] and len(with_workers[0][-1]["label"]) == 2
    for ours, ref in zip(sum(with_workers, []), sum(in_process, [])):
        assert ours.keys() == ref.keys() == {"image", "label", "meta"}
        for k in ref:
            assert torch.equal(ours[k], ref[k]) and ours[k].stride() == ref[k].stride()
    assert not torch.equal(with_workers[0][0]["image"], with_workers[1][0]["image"])  # new draws each epoch


def test_a_batch_overwritten_in_its_slot_raises_instead_of_passing_on():
    ring = BatchRing(workers=1, slots=2, batch_size=2, shape=(3, 4, 4))
    ring.images[0, 1, :2] = 7
    ring.tags[0, 1] = 5
    taken = ring.take({"slot": (0, 1, 5, 2), "label": np.zeros(2, np.float32), "meta": None, "rest": {}}, pin=False)
    assert taken["image"].shape == (2, 3, 4, 4) and int(taken["image"].sum()) == 7 * 2 * 48
    ring.tags[0, 1] = 7  # the worker has since written its batch 7 into the slot
    with pytest.raises(RuntimeError, match="batch 5 is not in its slot 1"):
        ring.take({"slot": (0, 1, 5, 2), "label": np.zeros(2, np.float32), "meta": None, "rest": {}}, pin=False)
    ring.tags[0, 1] = (7, 5)  # batch 7 started over it before the copy ended
    with pytest.raises(RuntimeError, match="overwritten"):
        ring.take({"slot": (0, 1, 5, 2), "label": np.zeros(2, np.float32), "meta": None, "rest": {}}, pin=False)


def test_without_fork_the_loader_falls_back_to_torchs_hand_over(images, monkeypatch):
    import multiprocessing

    store, ids, labels, meta = images
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "spawn")
    ds = LesionImages(store, ids, labels, create_transforms(48, False), meta=meta)
    assert type(make_loader(ds, 8, 2, CPU)) is torch.utils.data.DataLoader
    monkeypatch.undo()
    assert isinstance(make_loader(ds, 8, 2, CPU), RingLoader)
    assert type(make_loader(ds, 8, 0, CPU)) is torch.utils.data.DataLoader  # no workers: nothing to hand over


@pytest.mark.parametrize("train", [True, False])
def test_a_batch_fetched_at_once_equals_its_samples_collated(images, train):
    """`__getitems__` (what the DataLoader calls) gives the batch that collating `__getitem__`'s
    samples gives: the same seeded augmentations, labels and metadata rows, channels-last."""
    store, ids, labels, meta = images
    ds = LesionImages(store, ids, labels, create_transforms(48, train), meta=meta, min_side=48)
    keys = [(i, 1000 + i) for i in (5, 0, 17, 3)] if train else [5, 0, 17, 3]
    batch, ref = ds.__getitems__(keys), collate_samples([ds[k] for k in keys])
    assert batch.keys() == ref.keys() == {"image", "label", "meta"}
    for k in ref:
        assert torch.equal(batch[k], ref[k]) and batch[k].dtype == ref[k].dtype and batch[k].stride() == ref[k].stride()
    assert batch["label"].tolist() == labels[[5, 0, 17, 3]].tolist()
    assert collate_samples(batch) is batch  # a batch passes the collate function unchanged
    plain = LesionImages(store, ids, labels, create_transforms(48, False), meta=meta, min_side=48)
    assert torch.equal(batch["image"], plain.__getitems__([5, 0, 17, 3])["image"]) is not train  # augmented


def test_an_unreadable_image_in_a_batch_is_blank_with_its_error_when_skipped(images, tmp_path):
    from lesion_ml.data.images import ImageStore, MultiStore
    from lesion_ml.errors import BadImageError
    from lesion_ml.model.predict import _SafeImages

    store, ids, _, _ = images
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    both = MultiStore([store, ImageStore(root=tmp_path, files={"broken": "broken.jpg"})])
    keys = [0, 2, 1]
    for skip in (True, False):
        ds = _SafeImages(both, [ids[0], ids[1], "broken"], None, create_transforms(32, False), min_side=32,
                         skip_bad=skip)
        if not skip:
            with pytest.raises(BadImageError, match="broken.jpg"):
                ds.__getitems__(keys)
            continue
        batch = ds.__getitems__(keys)
        assert batch["error"][0] == batch["error"][2] == "" and "broken.jpg" in batch["error"][1]
        assert int(batch["image"][1].sum()) == 0 and int(batch["image"][0].sum()) > 0
        assert torch.equal(batch["image"], collate_samples([ds[k] for k in keys])["image"])
