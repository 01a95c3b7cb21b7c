"""Image-model training: dataset, one epoch, prediction and a whole resumable fold.

Samples are dicts ``{"image": Tensor[3, H, W], "label": float[, "meta": Tensor[n_meta]]}``.
Randomness comes only from the `seed` arguments, and each epoch reseeds everything it draws
from (sampler, loader, augmentation, dropout) from (seed, epoch): a run is reproducible, and
a run resumed from the checkpoint written after epoch e continues exactly as if never stopped.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from lesion_ml.augment import create_transforms, model_transforms, reseed
from lesion_ml.balance import EpochSampler, make_loss
from lesion_ml.config import CnnModelConfig
from lesion_ml.evaluate.metrics import partial_auc
from lesion_ml.io import save_torch
from lesion_ml.models.backbones import backbone_spec
from lesion_ml.models.net import LesionNet

log = logging.getLogger(__name__)

__all__ = ["FoldData", "FoldResult", "LesionImages", "LrShape", "SeededSampler", "create_transforms", "make_loader",
           "predict", "select_device", "to_device", "train_fold", "train_one_epoch"]


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


def select_device(name: str) -> torch.device:
    """"auto" picks CUDA when present, else CPU; "cuda" without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train_cnn.device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to `device` in channels-last layout (NHWC), which oneDNN on CPU and the tensor
    cores under bf16 autocast on CUDA both run faster than NCHW; `_forward` feeds it NHWC."""
    return model.to(device).to(memory_format=torch.channels_last)


def _forward(model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
    x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    meta = batch.get("meta")
    meta = None if meta is None else meta.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(x, meta) if isinstance(model, LesionNet) else model(x)
    return out.squeeze(1).float()


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, scheduler,
                    loss_fn: nn.Module, device: torch.device, on_step: Callable[[int], None] | None = None,
                    desc: str = "train") -> dict:
    """One pass over `loader`. Returns the mean loss, the images seen and their positive share.

    `on_step(step)` is called after every optimizer step (progress hooks, fault-injection tests).
    """
    total = torch.zeros((), device=device)  # summed on the device: no sync per step
    positives = torch.zeros((), device=device)
    count = 0
    for step, batch in enumerate(tqdm(loader, desc=desc, leave=False, disable=None, mininterval=10)):
        y = batch["label"].to(device, non_blocking=True)
        loss = loss_fn(_forward(model, batch, device), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach() * len(y)
        positives += y.sum()
        count += len(y)
        if on_step is not None:
            on_step(step)
    return {"train_loss": float(total) / max(count, 1), "images": count,
            "pos_fraction": round(float(positives) / max(count, 1), 4)}


@torch.no_grad()
def dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips and quarter turns of an image batch (lesions have no orientation)."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(2, 3))
        out += [r, torch.flip(r, dims=(3,))]
    return out


def forward_prob(model: nn.Module, batch: dict, device: torch.device, tta: bool = False) -> torch.Tensor:
    """Malignancy probabilities of a batch; with `tta` the mean over its 8 dihedral views."""
    if not tta:
        return torch.sigmoid(_forward(model, batch, device))
    return torch.stack([torch.sigmoid(_forward(model, {**batch, "image": v}, device))
                        for v in dihedral(batch["image"])]).mean(0)


def predict(model: nn.Module, loader: DataLoader, device: torch.device, tta: bool = False) -> np.ndarray:
    """Malignancy probabilities for every sample of `loader`, in order (see `forward_prob`)."""
    model.eval()
    with torch.no_grad():
        out = [forward_prob(model, batch, device, tta).cpu().numpy() for batch in loader]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


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


@dataclass
class FoldData:
    """The rows of one fold. `train_groups` (patients) are needed for early stopping's
    holdout; `*_meta` for fusion; `extra_*` are minority-set copies (positives) with the id
    of the image each was made from, dropped when that image is held out."""

    train_ids: list[str]
    train_y: np.ndarray
    valid_ids: list[str]
    valid_y: np.ndarray | None = None
    train_groups: np.ndarray | None = None
    train_meta: np.ndarray | None = None
    valid_meta: np.ndarray | None = None
    extra_ids: list[str] = field(default_factory=list)
    extra_sources: list[str] = field(default_factory=list)
    extra_meta: np.ndarray | None = None


@dataclass
class FoldResult:
    model: nn.Module
    valid_pred: np.ndarray
    history: list[dict]
    best_epoch: int
    resumed_from: int = 0  # epochs taken from a checkpoint (0: trained from the start)
    predict_seconds: float = 0.0  # wall time of predicting the validation rows (input path included)


@lru_cache(maxsize=1)
def _source_hash() -> str:
    """A hash of the lesion_ml sources: a checkpoint is resumed only by the code that wrote it."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _store_fingerprint(store) -> str:
    """What identifies the images a store serves without reading them all: each HDF5 file's path,
    size and modification time, and the folder mapping (a regenerated or edited file changes it)."""
    parts = []
    for s in getattr(store, "stores", [store]):
        for path in (getattr(s, "hdf5", None),):
            if path is not None and Path(path).exists():
                st = Path(path).stat()
                parts.append(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}")
        files = getattr(s, "files", {}) or {}
        parts.append(f"{getattr(s, 'root', None)}|" + hashlib.sha256(
            json.dumps(sorted(files.items())).encode()).hexdigest())
    return "\n".join(parts)


def _run_key(data: FoldData, cfg: CnnModelConfig, seed: int, store=None, device: str = "cpu") -> str:
    """What a checkpoint must match to be resumed (the loader worker count is not part of it: any
    count trains the same weights, see SeededSampler)."""
    h = hashlib.sha256()
    h.update(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode())
    h.update(f"{seed}|{_source_hash()}|{device}|{_store_fingerprint(store)}".encode())
    for ids in (data.train_ids, data.valid_ids, data.extra_ids):
        h.update("\n".join(ids).encode() + b"\x00")
    for arr in (data.train_y, data.train_groups, data.train_meta, data.valid_meta):
        if arr is not None:
            h.update(np.ascontiguousarray(np.asarray(arr).astype(str if arr.dtype == object else arr.dtype)).tobytes())
    return h.hexdigest()


def _holdout_split(data: FoldData, cfg: CnnModelConfig, seed: int) -> np.ndarray:
    """Boolean mask of training rows held out for early stopping (whole patients, stratified)."""
    if cfg.early_stopping.metric == "none":
        return np.zeros(len(data.train_ids), bool)
    groups = data.train_groups if data.train_groups is not None else np.arange(len(data.train_ids))
    n_splits = max(2, round(1 / cfg.early_stopping.holdout))
    if len(np.unique(groups)) < n_splits or int(np.sum(data.train_y)) < 1:
        raise ValueError(f"early stopping needs {n_splits} training patients and a malignant one for its holdout, "
                         f"this fold has {len(np.unique(groups))} patients and {int(np.sum(data.train_y))} malignant "
                         "rows; set params.yaml train_cnn.models.<name>.early_stopping.metric: none (or raise "
                         "early_stopping.holdout) for this data")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    y = np.asarray(data.train_y)
    for _, held in splitter.split(np.zeros(len(groups)), y, groups):
        mask = np.zeros(len(groups), bool)
        mask[held] = True
        if 0 < y[mask].sum() < mask.sum() and 0 < y[~mask].sum() < (~mask).sum():
            return mask  # both classes held out and both left to train on
    raise ValueError(f"no patient-grouped holdout of {cfg.early_stopping.holdout:.0%} has both classes on both "
                     f"sides ({int(y.sum())} malignant training rows); raise params.yaml "
                     "train_cnn.models.<name>.early_stopping.holdout or set early_stopping.metric: none")


def _score(y: np.ndarray, p: np.ndarray, metric: str) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    return float(partial_auc(y, p) if metric == "pauc" else roc_auc_score(y, p))


class LrShape:
    """The learning-rate multiplier of step `s` (0-based) of a run of `total` optimizer steps,
    for `torch.optim.lr_scheduler.LambdaLR`. Defined for every `total` >= 1, so a fold with a
    single batch per epoch (or a single step in all) trains like any other.

    - "onecycle": a cosine rise from 1/25 of the peak to the peak over the first `warmup_share`
      of the steps (none when that is under one step), then a cosine decay to 1/250,000 of
      the peak at the last step (torch's OneCycleLR shape, without its momentum cycling).
    - "cosine": cosine decay from the peak towards 0 over `total` steps (CosineAnnealingLR).

    Plain attributes only: the scheduler's state dict (and so a checkpoint) stores them.
    """

    START, END = 1 / 25, 1 / 25 / 1e4

    def __init__(self, kind: str, total: int, warmup_share: float = 0.3):
        if kind not in ("onecycle", "cosine"):
            raise ValueError(f"unknown schedule {kind!r}; allowed: onecycle, cosine")
        if total < 1:
            raise ValueError(f"a learning-rate schedule needs at least 1 step, got {total}")
        self.kind, self.total = kind, int(total)
        self.peak = min(self.total - 1, round(warmup_share * (self.total - 1))) if kind == "onecycle" else 0

    @staticmethod
    def _cos(start: float, end: float, frac: float) -> float:
        return end + (start - end) * (1 + math.cos(math.pi * frac)) / 2

    def __call__(self, step: int) -> float:
        s = min(max(step, 0), self.total - 1)  # the call after the last step sets no lr that is used
        if self.kind == "cosine":
            return self._cos(1.0, 0.0, s / self.total)
        if s <= self.peak:
            return self._cos(self.START, 1.0, s / self.peak) if self.peak else 1.0
        return self._cos(1.0, self.END, (s - self.peak) / (self.total - 1 - self.peak))


def _schedule(cfg: CnnModelConfig, optimizer: torch.optim.Optimizer, steps: int):
    """The scheduler of `cfg.schedule` over `steps` optimizer steps (the whole run)."""
    shape = LrShape(cfg.schedule, steps, warmup_share=min(0.3, 1 / cfg.epochs))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [shape] * len(optimizer.param_groups))


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch(state, path)


def train_fold(store, data: FoldData, cfg: CnnModelConfig, device: torch.device, num_workers: int = 0,
               seed: int = 0, checkpoint: Path | None = None, on_step: Callable[[int, int], None] | None = None,
               label: str = "", on_epoch: Callable[[int, dict], None] | None = None) -> FoldResult:
    """Train one model on a fold's training rows and predict its validation rows.

    Args:
        store: the image store (`get(id, min_side)`), also serving minority-set copies.
        data: the fold's rows (see FoldData).
        cfg: the model's params.
        device: from `select_device`.
        num_workers: DataLoader worker processes (0: decode in this process).
        seed: all randomness derives from it.
        checkpoint: file rewritten atomically after every epoch. When it exists and was written
            for the same data, params, seed and lesion_ml code, training resumes after its
            last epoch; a finished run is not trained again.
        on_step: called as on_step(epoch, step) after each optimizer step (tests).
        label: prefix for the progress bar and log lines (e.g. "resnet18 fold 2").
        on_epoch: called as on_epoch(epoch, row) after each epoch with its history row (a tuning
            trial reports `valid_pauc` to its pruner there; an exception it raises ends training).
    """
    key = _run_key(data, cfg, seed, store, device.type)
    backbone_spec(cfg.backbone)  # an unknown backbone fails before any image is read
    held = _holdout_split(data, cfg, seed)
    keep_extra = np.isin(data.extra_sources, np.asarray(data.train_ids)[held], invert=True) \
        if data.extra_ids else np.zeros(0, bool)
    fusion = cfg.fusion.enabled
    if fusion and (data.train_meta is None or data.valid_meta is None):
        raise ValueError("fusion.enabled needs metadata features for the training and validation rows")

    def meta_rows(meta: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
        return meta[mask] if fusion and meta is not None else None

    fit_ids = [i for i, h in zip(data.train_ids, held) if not h] + [i for i, k in zip(data.extra_ids, keep_extra) if k]
    fit_y = np.concatenate([data.train_y[~held], np.ones(int(keep_extra.sum()), np.float32)]).astype(np.float32)
    fit_meta = None
    if fusion:
        parts = [data.train_meta[~held]]
        if data.extra_ids:
            parts.append(data.extra_meta[keep_extra])
        fit_meta = np.concatenate(parts).astype(np.float32)

    train_tf, eval_tf = model_transforms(cfg, True), model_transforms(cfg, False)
    train_ds = LesionImages(store, fit_ids, fit_y, train_tf, fit_meta, cfg.image_size)
    sampler = SeededSampler(EpochSampler(fit_y, cfg.balance.sampler, cfg.balance.neg_per_pos, seed), seed)
    if len(sampler) < 2:  # BatchNorm cannot train on a batch of one
        raise ValueError(f"{label or 'this fold'}: {len(sampler)} training image(s) per epoch (of {len(fit_ids)} "
                         f"training rows); a batch needs at least 2; lower params.yaml split.n_folds or add images")
    train_dl = make_loader(train_ds, cfg.batch_size, num_workers, device, sampler, len(sampler) > cfg.batch_size)

    def eval_loader(ids: list[str], meta: np.ndarray | None) -> DataLoader:
        ds = LesionImages(store, ids, None, eval_tf, meta, cfg.image_size)
        return make_loader(ds, cfg.eval_batch_size or cfg.batch_size * 2, num_workers, device)

    valid_dl = eval_loader(data.valid_ids, data.valid_meta if fusion else None)
    hold_ids = [i for i, h in zip(data.train_ids, held) if h]
    hold_dl = eval_loader(hold_ids, meta_rows(data.train_meta, held)) if hold_ids else None

    torch.manual_seed(seed)
    n_meta = data.train_meta.shape[1] if fusion else 0
    model = LesionNet(cfg.backbone, cfg.pretrained, n_meta, cfg.fusion.hidden, cfg.fusion.dropout)
    if fusion:
        model.set_meta_scaling(torch.from_numpy(np.nanmean(fit_meta, 0)), torch.from_numpy(np.nanstd(fit_meta, 0)))
    model = to_device(model, device)
    optimizer = torch.optim.AdamW([{"params": model.backbone_parameters(), "lr": cfg.lr * cfg.backbone_lr_mult},
                                   {"params": model.head_parameters(), "lr": cfg.lr}], weight_decay=cfg.weight_decay)
    scheduler = _schedule(cfg, optimizer, max(1, cfg.epochs * len(train_dl)))
    loss_fn = make_loss(cfg.balance, fit_y, device)

    history: list[dict] = []
    best = {"score": -math.inf, "epoch": 0, "state": None}
    start_epoch, done, resumed = 0, False, 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if state.get("key") != key:
            log.info("%s: checkpoint %s is for other data, params or code; training from the start", label, checkpoint)
        else:
            model.load_state_dict(state["model"])
            history, done = state["history"], state["done"]
            best = {"score": state["best_score"], "epoch": state["best_epoch"], "state": state.get("best_model")}
            start_epoch = resumed = len(history)
            if not done:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
            log.info("%s: resuming after epoch %d from %s%s", label, start_epoch, checkpoint,
                     " (finished)" if done else "")

    metric = cfg.early_stopping.metric
    for epoch in range(start_epoch, cfg.epochs if not done else start_epoch):
        # Everything random in an epoch is seeded from (seed, epoch): replayable after a resume.
        sampler.set_epoch(epoch)  # the rows and their augmentation seeds
        torch.manual_seed(seed * 1000 + epoch)  # dropout
        frozen = epoch < cfg.warmup_epochs
        model.train()
        model.freeze_backbone(frozen)
        start = time.perf_counter()
        step_hook = (lambda step, e=epoch: on_step(e, step)) if on_step else None
        row = {"epoch": epoch + 1, "lr": round(optimizer.param_groups[-1]["lr"], 8), "frozen_backbone": frozen}
        row.update(train_one_epoch(model, train_dl, optimizer, scheduler, loss_fn, device, step_hook,
                                   desc=f"{label} epoch {epoch + 1}/{cfg.epochs}".strip()))
        model.freeze_backbone(False)
        if not math.isfinite(row["train_loss"]):
            raise FloatingPointError(f"training loss became {row['train_loss']} in epoch {epoch + 1}; lower "
                                     "params.yaml train_cnn.models.<name>.lr")
        if hold_dl is not None:
            p = predict(model, hold_dl, device)
            y = data.train_y[held]
            row["holdout_auc"], row["holdout_pauc"] = _score(y, p, "auc"), _score(y, p, "pauc")
        if cfg.monitor_valid and data.valid_y is not None:
            p = predict(model, valid_dl, device)
            row["valid_auc"], row["valid_pauc"] = _score(data.valid_y, p, "auc"), _score(data.valid_y, p, "pauc")
        row["seconds"] = round(time.perf_counter() - start, 3)
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
        stop = False
        if metric != "none":
            score = row[f"holdout_{metric}"]
            if math.isfinite(score) and score > best["score"]:
                best = {"score": score, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
            stop = epoch + 1 - best["epoch"] >= cfg.early_stopping.patience
        log.info("%s epoch %d/%d: %s", label, epoch + 1, cfg.epochs,
                 ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                           if k != "epoch"))
        done = stop or epoch + 1 == cfg.epochs
        if checkpoint is not None:
            if done:  # a finished run keeps only what predicting needs
                final = best["state"] if best["state"] is not None else model.state_dict()
                _save(checkpoint, {"key": key, "done": True, "history": history, "model": final,
                                   "best_score": best["score"], "best_epoch": best["epoch"]})
            else:
                _save(checkpoint, {"key": key, "done": False, "history": history, "model": model.state_dict(),
                                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                   "best_score": best["score"], "best_epoch": best["epoch"],
                                   **({"best_model": best["state"]} if best["state"] is not None else {})})
        if stop:
            log.info("%s: early stop after epoch %d; best holdout %s %.4f at epoch %d", label, epoch + 1,
                     metric, best["score"], best["epoch"])
            break
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    best_epoch = best["epoch"] if metric != "none" and best["epoch"] else len(history)
    start = time.perf_counter()
    valid_pred = predict(model, valid_dl, device, cfg.tta)  # the out-of-fold scores, as predict scores
    return FoldResult(model, valid_pred, history, best_epoch, resumed, round(time.perf_counter() - start, 3))
