"""Streaming images to a model: the dataset, the seeded epoch sampler and the DataLoader that every
training and evaluation pass uses (persistent workers, one thread each, image locations found
before they fork, batches handed over through reused shared memory).

Samples are dicts ``{"image": uint8 Tensor[3, H, W], "label": float[, "meta": Tensor[n_meta]]}``;
batches stack them with the images in channels-last memory (`collate_samples`). The DataLoader
fetches a batch at once (`LesionImages.__getitems__`), which writes each image straight into the
batch instead of building a sample per image.
"""
from __future__ import annotations

import mmap
import multiprocessing
from collections.abc import Iterator, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from lesion_ml.image.augment import EvalTransform, output_shape, reseed
from lesion_ml.image.balance import EpochSampler

__all__ = ["BatchRing", "LesionImages", "SeededSampler", "as_hwc", "collate_samples", "loader_worker_init", "make_loader"]


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

    def image_shape(self) -> tuple[int, ...] | None:
        """The [C, H, W] shape of every sample's image, when the transform fixes it (None: unknown)."""
        return output_shape(self.transform)

    def index_store(self) -> None:
        """Locate every image in the store now, before loader workers fork (`ImageStore.index`)."""
        index = getattr(self.store, "index", None)
        if index is not None:
            index(self.image_ids)

    def image(self, key: int | tuple[int, int]) -> np.ndarray | torch.Tensor:
        """The image of sample `key` as the transform leaves it: an H x W x C uint8 array from the
        evaluation pipeline, a [C, H, W] uint8 tensor (a view of one) from a training pipeline.

        Raises:
            BadImageError: the image cannot be read or decoded.
        """
        i, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None:
            reseed(self.transform, seed)
        rgb = self.store.get(self.image_ids[i], self.min_side)
        if isinstance(self.transform, EvalTransform):
            return self.transform.fit.apply(rgb)
        return self.transform(image=rgb)["image"]

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Sample `key`: a row index, or (row index, augmentation seed) from `SeededSampler`."""
        image = self.image(key)
        i = key[0] if isinstance(key, tuple) else key
        image = torch.from_numpy(image).permute(2, 0, 1) if isinstance(image, np.ndarray) else image
        sample = {"image": image, "label": torch.tensor(self.labels[i])}
        if self.meta is not None:
            sample["meta"] = torch.from_numpy(self.meta[i])
        return sample

    def __getitems__(self, keys: list) -> dict | list[dict]:
        """The samples `keys` already collated as `collate_samples` collates them: the DataLoader
        calls this once per batch instead of `__getitem__` per sample. Each image is written
        straight into the batch, and labels and metadata are taken as arrays, which saves the
        per-sample tensors (a label tensor alone costs 4-13 us, as much as resizing a tile). When
        the transform does not fix the image shape, the samples are returned for `collate_samples`."""
        shape = self.image_shape()
        if shape is None:
            return [self[k] for k in keys]
        c, h, w = shape
        images = np.empty((len(keys), h, w, c), np.uint8)
        rest = self.fill(images, keys)
        rows = [k[0] if isinstance(k, tuple) else k for k in keys]
        return _batch(torch.from_numpy(images), None, self.labels[rows], None if self.meta is None else self.meta[rows],
                      rest)

    def fill(self, images: np.ndarray, keys: list) -> dict:
        """Write the images of samples `keys` into `images` ([N, H, W, C]); returns the batch's
        other keys (none here)."""
        for n, key in enumerate(keys):
            images[n] = as_hwc(self.image(key))
        return {}


def as_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """An image from `LesionImages.image` as an H x W x C array (a view where it can be)."""
    return image if isinstance(image, np.ndarray) else image.permute(1, 2, 0).numpy()


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


def _stack_images(samples: list[dict], out: np.ndarray | None = None) -> np.ndarray:
    """The samples' [C, H, W] images as one [N, H, W, C] array (into `out` when given)."""
    return np.stack([s["image"].permute(1, 2, 0).numpy() for s in samples], out=out)


_OWN_KEYS = ("image", "label", "meta")  # collated here; any other key as torch collates it


def _batch(images: torch.Tensor, samples: list[dict] | None, labels: np.ndarray | None = None,
           meta: np.ndarray | None = None, rest: dict | None = None) -> dict:
    """A batch dict from [N, H, W, C] images (seen as [N, C, H, W]) and the samples' labels, metadata
    and other keys (each collated by torch's `default_collate`)."""
    if samples is not None:
        labels, meta, rest = _fields(samples)
    batch = {"image": images.permute(0, 3, 1, 2), "label": torch.from_numpy(labels)}
    if meta is not None:
        batch["meta"] = torch.from_numpy(meta)
    return {**batch, **(rest or {})}


def _fields(samples: list[dict]) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """The samples' labels and metadata as arrays, and their other keys collated."""
    labels = np.array([float(s["label"]) for s in samples], np.float32)
    meta = np.stack([s["meta"].numpy() for s in samples]) if "meta" in samples[0] else None
    rest = {k: default_collate([s[k] for s in samples]) for k in samples[0] if k not in _OWN_KEYS}
    return labels, meta, rest


def collate_samples(samples: list[dict]) -> dict:
    """One batch: the images stacked in channels-last memory, an [N, C, H, W] uint8 tensor whose
    bytes are [N, H, W, C]. That is the layout the transforms leave each image in (a [C, H, W]
    view of an H x W x C array) and the one the networks run in (`inference.to_device`), so each
    image is one contiguous copy instead of a gather, and the forward pass changes no layout.
    Samples that are not such dicts are collated as torch does."""
    if isinstance(samples, dict):  # a batch already (`LesionImages.__getitems__`)
        return samples
    if not (isinstance(samples[0], dict) and isinstance(samples[0].get("image"), torch.Tensor)):
        return default_collate(samples)
    return _batch(torch.from_numpy(_stack_images(samples)), samples)


class BatchRing:
    """Batches handed from loader workers to this process through one block of shared memory,
    mapped before the workers fork and reused batch after batch.

    torch's own hand-over stacks each batch into a new shared-memory segment, passes its file
    descriptor and frees it here: fresh pages to fault in on both sides, about 40 us an image at
    128 px in a worker, on top of its decode and augmentation. Here each worker owns `slots`
    batch slots and writes its n-th batch into slot n mod `slots`; this process copies the images
    out (`take`, a few us an image) before the batch leaves the loader.

    A slot is written again only after this process has taken the batch it held: the DataLoader
    sends a worker at most `prefetch_factor` batches ahead of the one being consumed, and `slots`
    is larger than that. Each slot also records the number of the batch it holds before and after
    its images are written, so a batch overwritten while it is copied raises instead of passing on
    mixed images.
    """

    def __init__(self, workers: int, slots: int, batch_size: int, shape: tuple[int, int, int]):
        c, h, w = shape
        self.slots, self.batch_size, self.shape = slots, batch_size, (c, h, w)
        n_bytes = workers * slots * batch_size * c * h * w
        self._buf = mmap.mmap(-1, n_bytes + workers * slots * 16)  # anonymous and shared: forked workers write it
        self.images = np.frombuffer(self._buf, np.uint8, n_bytes).reshape(workers, slots, batch_size, h, w, c)
        self.tags = np.frombuffer(self._buf, np.int64, workers * slots * 2, n_bytes).reshape(workers, slots, 2)
        self.tags[:] = -1
        self.written = 0  # batches this process has written (each worker counts its own after the fork)

    def __call__(self, samples: list[dict]) -> dict:
        """The workers' collate function: the images into this worker's next slot, when they fit;
        returns what travels through the result queue (the slot, labels and metadata as arrays)."""
        worker = get_worker_info()
        batch = samples if isinstance(samples, dict) else None  # collated by `LesionImages.__getitems__`
        size = len(batch["label"]) if batch is not None else len(samples)
        shapes = {tuple(batch["image"].shape[1:])} if batch is not None else {tuple(s["image"].shape) for s in samples}
        if worker is None or size > self.batch_size or shapes != {self.shape}:
            return collate_samples(samples)
        w, n = worker.id, self.written
        k = n % self.slots
        self.written += 1
        self.tags[w, k, 0] = n
        if batch is None:
            _stack_images(samples, self.images[w, k, :size])
            labels, meta, rest = _fields(samples)
        else:
            self.images[w, k, :size] = batch["image"].permute(0, 2, 3, 1).numpy()
            labels, meta = batch["label"].numpy(), None if "meta" not in batch else batch["meta"].numpy()
            rest = {key: v for key, v in batch.items() if key not in _OWN_KEYS}
        self.tags[w, k, 1] = n
        return {"slot": (w, k, n, size), "label": labels, "meta": meta, "rest": rest}

    def take(self, batch: dict, pin: bool) -> dict:
        """In this process: the batch a worker left in a slot, as `collate_samples` gives it (the
        images copied out, into page-locked memory when `pin`); other batches pass unchanged."""
        if "slot" not in batch:
            return batch
        w, k, n, size = batch["slot"]
        if self.tags[w, k, 1] != n:
            raise RuntimeError(f"loader worker {w}: batch {n} is not in its slot {k} (it holds {self.tags[w, k, 1]})")
        images = torch.empty((size, *self.images.shape[3:]), dtype=torch.uint8, pin_memory=pin)
        images.numpy()[...] = self.images[w, k, :size]
        if self.tags[w, k, 0] != n:
            raise RuntimeError(f"loader worker {w}: batch {n} was overwritten in slot {k} while it was copied out")
        return _batch(images, None, batch["label"], batch["meta"], batch["rest"])


class RingLoader(DataLoader):
    """A DataLoader whose workers hand their batches over through a `BatchRing`."""

    def __init__(self, dataset: Dataset, ring: BatchRing, pin: bool, **kwargs):
        super().__init__(dataset, collate_fn=ring, pin_memory=False, **kwargs)
        self.ring, self.pin = ring, pin

    def __iter__(self) -> Iterator[dict]:
        for batch in super().__iter__():
            yield self.ring.take(batch, self.pin)


def loader_worker_init(worker_id: int) -> None:
    """One torch thread per loader worker: the workers are the parallelism."""
    torch.set_num_threads(1)


_PREFETCH = 2  # batches each loader worker prepares ahead (torch's default)


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device,
                sampler: Sampler | None = None, drop_last: bool = False, index: bool = True) -> DataLoader:
    """The DataLoader of every training and evaluation pass. Workers (when `num_workers` > 0)
    start once and persist across epochs and passes; batches are pinned for a CUDA device.

    With workers, OpenCV is set to one thread in this process before they fork (its thread pool
    cannot be resized inside a forked child: that call hangs), so each worker decodes on one core
    instead of every worker starting a pool the size of the machine; and, with `index`, the
    dataset's images are located in the store first (`LesionImages.index_store`), so that the
    workers inherit the locations instead of each finding them again every epoch. A single pass
    (prediction) gains nothing from that: each image is located once either way, and in the
    workers it overlaps the forward pass instead of delaying its start (20 s of one core for the
    401,059 images of ISIC 2024)."""
    if num_workers:
        cv2.setNumThreads(1)
        locate = getattr(dataset, "index_store", None) if index else None
        if locate is not None:
            locate()
    kwargs = dict(batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last, num_workers=num_workers,
                  worker_init_fn=loader_worker_init if num_workers else None, persistent_workers=num_workers > 0,
                  generator=torch.Generator())  # its own: never draws from torch's global RNG (dropout)
    shape = getattr(dataset, "image_shape", lambda: None)()
    forks = (multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]) == "fork"
    if num_workers and shape is not None and forks:
        ring = BatchRing(num_workers, _PREFETCH + 2, batch_size, shape)
        return RingLoader(dataset, ring, device.type == "cuda", prefetch_factor=_PREFETCH, **kwargs)
    return DataLoader(dataset, collate_fn=collate_samples, pin_memory=device.type == "cuda", **kwargs)
