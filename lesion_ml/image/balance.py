"""Class balancing for the image models: what an epoch draws, how the loss weighs it, and the
materialised set of augmented malignant copies.

Malignant lesions are about 0.1% of ISIC 2024. Three levers, combinable through
params.yaml `train_cnn.models.<name>.balance`:
- the sampler: "downsample" draws every positive plus a fresh random subset of negatives each
  epoch (the ISIC 2024 winners' recipe, and it makes epochs short); "weighted" draws with
  replacement through torch's WeightedRandomSampler so that the expected ratio is the
  configured one; "none" shuffles all rows;
- the loss: BCE or focal loss, with a positive-class weight;
- the minority set: augmented copies of each malignant image, written once by the
  `minority_set` stage (DVC caches it), added to the training rows of their source's folds.
"""
from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Sampler, WeightedRandomSampler

from lesion_ml.config import BalanceConfig, MinoritySetConfig
from lesion_ml.data.images import ImageStore
from lesion_ml.image.augment import create_copy_transform, reseed
from lesion_ml.io import atomic_path
from lesion_ml.sampling import negatives_for, positives_plus_negatives

log = logging.getLogger(__name__)


class EpochSampler(Sampler[int]):
    """Indices for one epoch by `mode` ("none", "downsample", "weighted"); call `set_epoch`
    before each epoch. The draw depends only on (seed, epoch), so any epoch can be replayed.
    `neg_per_pos` (negatives per positive; unused by "none") comes from params.yaml
    train_cnn.models.<name>.balance (defaults in lesion_ml/config/)."""

    def __init__(self, labels: Sequence[float], mode: str, neg_per_pos: float, seed: int):
        self.labels = np.asarray(labels, dtype=np.float32)
        self.pos = np.flatnonzero(self.labels == 1)
        self.neg = np.flatnonzero(self.labels != 1)
        if mode not in ("none", "downsample", "weighted"):
            raise ValueError(f"unknown sampler {mode!r}; allowed: none, downsample, weighted")
        if mode != "none" and len(self.pos) == 0:
            raise ValueError(f"no malignant training image in this fold, and balance.sampler {mode!r} draws "
                             "positives; set params.yaml train_cnn.models.<name>.balance.sampler: none, or lower "
                             "split.n_folds so that every fold trains on malignant cases")
        self.mode, self.neg_per_pos, self.seed, self.epoch = mode, neg_per_pos, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _n_neg(self) -> int:
        return min(len(self.neg), negatives_for(len(self.pos), self.neg_per_pos))

    def __len__(self) -> int:
        if self.mode == "downsample":
            return len(self.pos) + self._n_neg()
        return len(self.labels)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.mode == "none":
            order = rng.permutation(len(self.labels))
        elif self.mode == "downsample":
            order = rng.permutation(positives_plus_negatives(self.labels, self._n_neg(), rng, sort=False))
        else:
            w = np.where(self.labels == 1, self.neg_per_pos ** -1 * len(self.neg) / len(self.pos), 1.0)
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            order = np.fromiter(WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(self.labels),
                                                      replacement=True, generator=gen), dtype=np.int64)
        return iter(order.tolist())

    def expected_pos_fraction(self) -> float:
        """The share of positives an epoch is built to contain."""
        if self.mode == "none":
            return float(len(self.pos) / max(len(self.labels), 1))
        if self.mode == "downsample":
            return float(len(self.pos) / max(len(self), 1))
        return float(1 / (1 + self.neg_per_pos))


class FocalLoss(nn.Module):
    """Binary focal loss on logits, mean over the batch: BCE x (1 - p_t)^gamma, positives
    weighted by `pos_weight` (Lin et al. 2017)."""

    def __init__(self, gamma: float = 2.0, pos_weight: float = 1.0):
        super().__init__()
        self.gamma, self.pos_weight = gamma, pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = torch.exp(-bce)
        weight = 1 + (self.pos_weight - 1) * target
        return (weight * (1 - p_t) ** self.gamma * bce).mean()


def resolve_pos_weight(cfg: BalanceConfig, labels: Sequence[float]) -> float:
    """`cfg.pos_weight`, or for "auto": negatives/positives when every row is drawn (sampler
    none), else 1 (the sampler already balances)."""
    if cfg.pos_weight != "auto":
        return float(cfg.pos_weight)
    if cfg.sampler != "none":
        return 1.0
    y = np.asarray(labels)
    return float((y != 1).sum() / max((y == 1).sum(), 1))


def make_loss(cfg: BalanceConfig, labels: Sequence[float], device: torch.device) -> nn.Module:
    """The training loss of `cfg` with its positive weight resolved on the training `labels`."""
    w = resolve_pos_weight(cfg, labels)
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma, w)
    return nn.BCEWithLogitsLoss(pos_weight=torch.tensor([w], device=device))


def copy_id(source_id: str, k: int) -> str:
    return f"{source_id}__aug{k}"


def write_minority_set(store: ImageStore, positive_ids: Sequence[str], cfg: MinoritySetConfig, *,
                       images_out: Path) -> pd.DataFrame:
    """Write `cfg.copies` augmented copies of each positive image to the HDF5 file `images_out`
    (JPEG bytes, keyed by copy id; too large to return, so written here, atomically); return
    the index (copy_id, source_id), which the caller writes.

    Each copy's augmentation is seeded by (cfg.seed, source id, copy number), so the set is
    the same whatever order or subset of images it is built from.
    """
    transform = create_copy_transform(cfg.augment, cfg.max_side)
    rows = []
    with atomic_path(images_out) as tmp, h5py.File(tmp, "w") as h5:
        for source in positive_ids:
            image = store.get(source)
            for k in range(cfg.copies):
                reseed(transform, (cfg.seed * 1_000_003 + zlib.crc32(source.encode()) * 31 + k) % 2**31)
                copy = transform(image=image)["image"]
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(copy, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                if not ok:
                    raise RuntimeError(f"could not encode the augmented copy {k} of {source}")
                h5.create_dataset(copy_id(source, k), data=np.void(buf.tobytes()))
                rows.append((copy_id(source, k), source))
    index = pd.DataFrame(rows, columns=["copy_id", "source_id"])
    log.info("minority set: %d copies of %d malignant images", len(index), len(positive_ids))
    return index
