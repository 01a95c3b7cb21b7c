"""Image-model training: dataset, transforms, one epoch, prediction and a whole fold.

Samples are dicts ``{"image": Tensor[3, H, W], "label": float}``. Randomness comes from the
`seed` arguments only.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lesion_ml.config import CnnModelConfig
from lesion_ml.data.images import ImageStore
from lesion_ml.models.backbones import IMAGENET_MEAN, IMAGENET_STD, backbone_spec, create_backbone

log = logging.getLogger(__name__)


def create_transforms(image_size: int, train: bool, mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD) -> A.Compose:
    """Resize to a square `image_size`; flips and 90-degree turns when `train`; then scale with the
    backbone's `mean`/`std` (ImageNet statistics, or 0.5/0.5 for EfficientNet-Lite0)."""
    steps: list = [A.Resize(image_size, image_size, interpolation=1)]
    if train:
        steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return A.Compose(steps)


class LesionImages(Dataset):
    """Images streamed from an ImageStore, with labels (NaN when unknown)."""

    def __init__(self, store: ImageStore, image_ids: Sequence[str], labels: Sequence[float] | None,
                 transform: A.Compose):
        self.store = store
        self.image_ids = list(image_ids)
        self.labels = np.full(len(self.image_ids), np.nan, np.float32) if labels is None \
            else np.asarray(labels, np.float32)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> dict:
        image = self.transform(image=self.store.get(self.image_ids[i]))["image"]
        return {"image": image, "label": torch.tensor(self.labels[i])}


def select_device(name: str) -> torch.device:
    """"auto" picks CUDA when present, else CPU; "cuda" without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train_cnn.device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler, loss_fn: nn.Module, device: torch.device) -> float:
    """One pass over `loader`; returns the mean training loss."""
    model.train()
    total, count = torch.zeros((), device=device), 0  # summed on the device: no sync per step
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model(x).squeeze(1).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach() * len(y)
        count += len(y)
    return float(total) / max(count, 1)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Malignancy probabilities for every sample of `loader`, in order."""
    model.eval()
    out = []
    for batch in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(batch["image"].to(device, non_blocking=True)).squeeze(1).float()
        out.append(torch.sigmoid(logits).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation seed, derived from the loader's generator."""
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**31)


@dataclass
class FoldResult:
    model: nn.Module
    valid_pred: np.ndarray
    history: list[dict]


def train_fold(store: ImageStore, train_ids: Sequence[str], train_y: np.ndarray, valid_ids: Sequence[str],
               cfg: CnnModelConfig, device: torch.device, num_workers: int = 0, seed: int = 0) -> FoldResult:
    """Train one model on the training ids and predict the validation ids.

    Class imbalance is handled with BCE's `pos_weight` = negatives / positives.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    spec = backbone_spec(cfg.backbone)
    train_ds = LesionImages(store, train_ids, train_y, create_transforms(cfg.image_size, True, spec.mean, spec.std))
    valid_ds = LesionImages(store, valid_ids, None, create_transforms(cfg.image_size, False, spec.mean, spec.std))
    loader_kw = {"num_workers": num_workers, "pin_memory": device.type == "cuda", "worker_init_fn": _seed_worker}
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_ds) > cfg.batch_size,
                          generator=gen, **loader_kw)
    valid_dl = DataLoader(valid_ds, batch_size=cfg.batch_size * 2, shuffle=False, **loader_kw)
    model = create_backbone(cfg.backbone, cfg.pretrained).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    n_pos = float(np.sum(train_y))
    pos_weight = torch.tensor([(len(train_y) - n_pos) / max(n_pos, 1.0)], device=device)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, cfg.epochs * len(train_dl))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps,
                                                    pct_start=min(0.3, 1 / max(cfg.epochs, 1)))
    history = []
    for epoch in range(cfg.epochs):
        # Augmentation and shuffling are seeded per epoch: a run is reproducible, and any epoch
        # can be replayed without replaying the ones before it.
        gen.manual_seed(seed * 1000 + epoch)
        train_ds.transform.set_random_seed(seed * 1000 + epoch)
        start = time.perf_counter()
        loss = train_one_epoch(model, train_dl, optimizer, scheduler, loss_fn, device)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} in epoch {epoch + 1}; lower "
                                     "params.yaml train_cnn.models.<name>.lr")
        history.append({"epoch": epoch + 1, "train_loss": loss, "seconds": round(time.perf_counter() - start, 3)})
        log.info("epoch %d/%d train loss %.4f", epoch + 1, cfg.epochs, loss)
    return FoldResult(model, predict(model, valid_dl, device), history)
