"""Streaming images to a model: the dataset, the seeded epoch sampler and the DataLoader that every
training and evaluation pass uses (persistent workers, one thread each, image locations found
before they fork).

Samples are dicts ``{"image": uint8 Tensor[3, H, W], "label": float[, "meta": Tensor[n_meta]]}``.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lesion_ml.augment import reseed
from lesion_ml.balance import EpochSampler

__all__ = ["LesionImages", "SeededSampler", "loader_worker_init", "make_loader"]


class LesionImages(Dataset):
    """Images streamed from an ImageStore (decoded in the loader's workers), with labels (NaN
    when unknown) and optional metadata rows.

    `min_side` lets the store decode large JPEGs at a reduced scale (see `decode_image`).
    """

    def __init__(self, store, image_ids: Sequence[str], labels: Sequence[float] | None, transform: A.Compose,
                 meta: np.ndarray | None = None, min_side: int | None = None):
        self.store = store
        self.image_ids = list(image_ids)
        self.labels = np.full(len(self.image_ids), np.nan, np.float32) if labels is None \
            else np.asarray(labels, np.float32)
        self.meta = None if meta is None else np.array(meta, np.float32)  # a copy: writable, own memory
        self.transform = transform
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.image_ids)

    def index_store(self) -> None:
        """Locate every image in the store now, before loader workers fork (`ImageStore.index`)."""
        index = getattr(self.store, "index", None)
        if index is not None:
            index(self.image_ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Sample `key`: a row index, or (row index, augmentation seed) from `SeededSampler`."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None:
            reseed(self.transform, seed)
        image = self.transform(image=self.store.get(self.image_ids[i], self.min_side))["image"]
        sample = {"image": image, "label": torch.tensor(self.labels[i])}
        if self.meta is not None:
            sample["meta"] = torch.from_numpy(self.meta[i])
        return sample


class SeededSampler(Sampler):
    """Yields (row index, augmentation seed) pairs: the rows of `sampler`'s epoch, each with a seed
    drawn from (seed, epoch) in this process. A sample's augmentation then depends only on the
    run's seed, the epoch and its place in the epoch, not on which loader worker decodes it, how
    many there are, or whether they persist across epochs: any worker count trains the same
    weights, and an epoch replays exactly after a resume."""

    def __init__(self, sampler: EpochSampler, seed: int):
        self.sampler, self.seed, self.epoch = sampler, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(self.sampler)
        seeds = np.random.default_rng([self.seed, self.epoch, 1]).integers(0, 2**31, len(order))
        return iter(zip(order, seeds.tolist()))


def loader_worker_init(worker_id: int) -> None:
    """One torch thread per loader worker: the workers are the parallelism."""
    torch.set_num_threads(1)


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device,
                sampler: Sampler | None = None, drop_last: bool = False) -> DataLoader:
    """The DataLoader of every training and evaluation pass. Workers (when `num_workers` > 0)
    start once and persist across epochs and passes; batches are pinned for a CUDA device.

    With workers, OpenCV is set to one thread in this process before they fork (its thread pool
    cannot be resized inside a forked child: that call hangs), so each worker decodes on one core
    instead of every worker starting a pool the size of the machine; and the dataset's images are
    located in the store first (`LesionImages.index_store`), so that the workers inherit the
    locations instead of each finding them again."""
    if num_workers:
        cv2.setNumThreads(1)
        index = getattr(dataset, "index_store", None)
        if index is not None:
            index()
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
                      num_workers=num_workers, pin_memory=device.type == "cuda",
                      worker_init_fn=loader_worker_init if num_workers else None,
                      persistent_workers=num_workers > 0,
                      generator=torch.Generator())  # its own: never draws from torch's global RNG (dropout)
