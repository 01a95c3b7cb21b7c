"""Image-model training: one epoch, and a whole resumable fold (its loaders, model and
optimiser, checkpoint and epoch loop). Loading is in lesion_ml.image.loaders, running a model in
lesion_ml.image.inference.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lesion_ml.config import CnnModelConfig
from lesion_ml.image.data import FoldData, fold_data
from lesion_ml.evaluate.metrics import partial_auc
from lesion_ml.fingerprint import code_fingerprint
from lesion_ml.image.augment import create_transforms, model_transforms
from lesion_ml.image.backbones import backbone_spec
from lesion_ml.image.balance import EpochSampler, make_loss
from lesion_ml.image.inference import dihedral, forward_logits, forward_prob, predict, select_device, to_device
from lesion_ml.image.loaders import LesionImages, SeededSampler, loader_worker_init, make_loader
from lesion_ml.image.net import LesionNet
from lesion_ml.image.schedule import LrShape, make_optimizer, make_schedule, weight_average
from lesion_ml.io import save_torch

log = logging.getLogger(__name__)

# LesionImages ... to_device: re-exported, the names training's callers have always imported from here
__all__ = ["Checkpoint", "FoldData", "FoldResult", "LesionImages", "LrShape", "SeededSampler", "create_transforms",
           "dihedral", "fold_data", "forward_logits", "forward_prob", "loader_worker_init", "make_loader", "predict",
           "select_device", "to_device", "train_fold", "train_one_epoch", "weight_average"]


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
        loss = loss_fn(forward_logits(model, batch, device), y)
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


@dataclass
class FoldResult:
    model: nn.Module
    valid_pred: np.ndarray
    history: list[dict]
    best_epoch: int
    resumed_from: int = 0  # epochs taken from a checkpoint (0: trained from the start)
    predict_seconds: float = 0.0  # wall time of predicting the validation rows (input path included)


def _code_fingerprint(store) -> str:
    """`code_fingerprint` of training (every lesion_ml module lesion_ml.image.train imports, and the
    store's own module) and of the environment: the task cache's key rule, so a checkpoint is
    resumed only by the code, library versions and lock file that wrote it."""
    return code_fingerprint([__name__, type(store).__module__])


def _store_fingerprint(store) -> str:
    """The images a store serves, by content: each HDF5 file and each file of the folder mapping
    (lesion_ml.io.image_store_digest, the task cache's fingerprint). Hashes are memoised by (path,
    size, mtime, ctime, inode): a file is read once per stamp (in a pipeline run the task cache
    has read it already), after that a key costs a stat per file."""
    from lesion_ml.io import image_store_digest

    return "\n".join(image_store_digest(getattr(s, "hdf5", None), getattr(s, "root", None),
                                        getattr(s, "files", None) or {}) for s in getattr(store, "stores", [store]))


def _run_key(data: FoldData, cfg: CnnModelConfig, seed: int, store=None, device: str = "cpu") -> str:
    """What a checkpoint must match to be resumed (the loader worker count is not part of it: any
    count trains the same weights, see SeededSampler)."""
    h = hashlib.sha256()
    h.update(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode())
    h.update(f"{seed}|{_code_fingerprint(store)}|{device}|{_store_fingerprint(store)}".encode())
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


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch(state, path)


@dataclass
class _Run:
    """A fold's model, what is scored and kept (the model itself or its weight average), and
    how it learns."""

    model: LesionNet
    scored: nn.Module
    average: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module


@dataclass
class _Loaders:
    train: DataLoader
    sampler: SeededSampler
    valid: DataLoader
    holdout: DataLoader | None


class Checkpoint:
    """A fold's resumable state in one file, rewritten atomically at the end of an epoch: during
    training the model, optimiser, scheduler and weight average; once finished only the weights
    that are scored (the best epoch's under early stopping). `key` (`_run_key`) must match for
    it to be resumed.

    A mid-training state (about three copies of the weights: 130 MB for a ResNet-18) is written
    at the end of an epoch only once `every_s` seconds have passed since the last one was written
    (0: after every epoch), so that short epochs do not spend their time writing checkpoints; a
    kill then loses at most `every_s` seconds plus one epoch. The finished state is always written.
    Since every epoch is replayable from its seed, where training resumes does not change the weights."""

    def __init__(self, path: Path | None, key: str, label: str = "", every_s: float = 0.0):
        self.path, self.key, self.label, self.every_s = path, key, label, every_s
        self.last = time.monotonic()

    def restore(self, run: _Run, device: torch.device) -> tuple[list[dict], bool, dict]:
        """(history, done, best) of the run it holds, its state loaded into `run`; a fresh start
        when there is none or it was written for other data, params or code."""
        fresh: tuple[list[dict], bool, dict] = ([], False, {"score": -math.inf, "epoch": 0, "state": None})
        if self.path is None or not self.path.is_file():
            return fresh
        state = torch.load(self.path, map_location=device, weights_only=True)
        if state.get("key") != self.key:
            log.info("%s: checkpoint %s is for other data, params or code; training from the start", self.label,
                     self.path)
            return fresh
        history, done = state["history"], state["done"]
        (run.scored if done else run.model).load_state_dict(state["model"])  # a finished run keeps what it scores
        if not done:
            if run.average is not None:
                run.average.load_state_dict(state["average"])
            run.optimizer.load_state_dict(state["optimizer"])
            run.scheduler.load_state_dict(state["scheduler"])
        log.info("%s: resuming after epoch %d from %s%s", self.label, len(history), self.path,
                 " (finished)" if done else "")
        return history, done, {"score": state["best_score"], "epoch": state["best_epoch"],
                               "state": state.get("best_model")}

    def save(self, run: _Run, history: list[dict], best: dict, done: bool) -> None:
        if self.path is None or (not done and time.monotonic() - self.last < self.every_s):
            return
        state = {"key": self.key, "done": done, "history": history, "best_score": best["score"],
                 "best_epoch": best["epoch"]}
        if done:  # a finished run keeps only what predicting needs
            state["model"] = best["state"] if best["state"] is not None else run.scored.state_dict()
        else:
            state.update(model=run.model.state_dict(), optimizer=run.optimizer.state_dict(),
                         scheduler=run.scheduler.state_dict(),
                         **({"average": run.average.state_dict()} if run.average is not None else {}),
                         **({"best_model": best["state"]} if best["state"] is not None else {}))
        _save(self.path, state)
        self.last = time.monotonic()


def _fit_rows(data: FoldData, cfg: CnnModelConfig, held: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """(ids, labels, metadata) the model trains on: the training rows not held out, plus the
    minority-set copies of those rows' positives."""
    keep_extra = np.isin(data.extra_sources, np.asarray(data.train_ids)[held], invert=True) \
        if data.extra_ids else np.zeros(0, bool)
    fit_ids = [i for i, h in zip(data.train_ids, held) if not h] + [i for i, k in zip(data.extra_ids, keep_extra) if k]
    fit_y = np.concatenate([data.train_y[~held], np.ones(int(keep_extra.sum()), np.float32)]).astype(np.float32)
    fit_meta = None
    if cfg.fusion.enabled:
        parts = [data.train_meta[~held]]
        if data.extra_ids:
            parts.append(data.extra_meta[keep_extra])
        fit_meta = np.concatenate(parts).astype(np.float32)
    return fit_ids, fit_y, fit_meta


def _loaders(store, data: FoldData, cfg: CnnModelConfig, held: np.ndarray, fit: tuple, device: torch.device,
             num_workers: int, seed: int, label: str) -> _Loaders:
    """The training loader (balanced by `cfg.balance`, augmented) and the evaluation loaders of
    the validation fold and the early-stopping holdout."""
    fit_ids, fit_y, fit_meta = fit
    train_ds = LesionImages(store, fit_ids, fit_y, model_transforms(cfg, True), fit_meta, cfg.image_size)
    sampler = SeededSampler(EpochSampler(fit_y, cfg.balance.sampler, cfg.balance.neg_per_pos, seed), seed)
    if len(sampler) < 2:  # BatchNorm cannot train on a batch of one
        raise ValueError(f"{label or 'this fold'}: {len(sampler)} training image(s) per epoch (of {len(fit_ids)} "
                         f"training rows); a batch needs at least 2; lower params.yaml split.n_folds or add images")
    train_dl = make_loader(train_ds, cfg.batch_size, num_workers, device, sampler, len(sampler) > cfg.batch_size)
    eval_tf = model_transforms(cfg, False)

    def eval_loader(ids: list[str], meta: np.ndarray | None) -> DataLoader:
        ds = LesionImages(store, ids, None, eval_tf, meta if cfg.fusion.enabled else None, cfg.image_size)
        return make_loader(ds, cfg.eval_batch_size or cfg.batch_size * 2, num_workers, device)

    valid_dl = eval_loader(data.valid_ids, data.valid_meta)
    hold_ids = [i for i, h in zip(data.train_ids, held) if h]
    hold_meta = data.train_meta[held] if cfg.fusion.enabled and data.train_meta is not None else None
    return _Loaders(train_dl, sampler, valid_dl, eval_loader(hold_ids, hold_meta) if hold_ids else None)


def _build(cfg: CnnModelConfig, data: FoldData, fit_y: np.ndarray, fit_meta: np.ndarray | None,
           device: torch.device, steps_per_epoch: int, seed: int) -> _Run:
    """The network (fusion inputs standardised on the training rows), AdamW with the backbone's
    learning rate scaled by `backbone_lr_mult`, the schedule, the loss and the weight average."""
    torch.manual_seed(seed)
    n_meta = data.train_meta.shape[1] if cfg.fusion.enabled else 0
    model = LesionNet(cfg.backbone, cfg.pretrained, n_meta, cfg.fusion.hidden, cfg.fusion.dropout)
    if cfg.fusion.enabled:
        model.set_meta_scaling(torch.from_numpy(np.nanmean(fit_meta, 0)), torch.from_numpy(np.nanstd(fit_meta, 0)))
    model = to_device(model, device)
    optimizer = make_optimizer([{"params": model.backbone_parameters(), "lr": cfg.lr * cfg.backbone_lr_mult},
                                {"params": model.head_parameters(), "lr": cfg.lr}], cfg.weight_decay)
    scheduler = make_schedule(cfg, optimizer, max(1, cfg.epochs * steps_per_epoch))
    average = weight_average(model, cfg.ema_half_life, steps_per_epoch)
    return _Run(model, model if average is None else average.module, average, optimizer, scheduler,
                make_loss(cfg.balance, fit_y, device))


def _epoch(run: _Run, loaders: _Loaders, epoch: int, cfg: CnnModelConfig, data: FoldData, held: np.ndarray,
           device: torch.device, seed: int, on_step: Callable[[int, int], None] | None, label: str) -> dict:
    """Train one epoch and score the holdout (and the validation fold with `monitor_valid`);
    its history row. Everything random in it is seeded from (seed, epoch): replayable after a resume."""
    loaders.sampler.set_epoch(epoch)  # the rows and their augmentation seeds
    torch.manual_seed(seed * 1000 + epoch)  # dropout
    frozen = epoch < cfg.warmup_epochs
    run.model.train()
    run.model.freeze_backbone(frozen)
    start = time.perf_counter()

    def step_hook(step: int) -> None:
        if run.average is not None:
            run.average.update_parameters(run.model)
        if on_step is not None:
            on_step(epoch, step)

    row = {"epoch": epoch + 1, "lr": round(run.optimizer.param_groups[-1]["lr"], 8), "frozen_backbone": frozen}
    row.update(train_one_epoch(run.model, loaders.train, run.optimizer, run.scheduler, run.loss_fn, device,
                               step_hook, desc=f"{label} epoch {epoch + 1}/{cfg.epochs}".strip()))
    run.model.freeze_backbone(False)
    if not math.isfinite(row["train_loss"]):
        raise FloatingPointError(f"training loss became {row['train_loss']} in epoch {epoch + 1}; lower "
                                 "params.yaml train_cnn.models.<name>.lr")
    if loaders.holdout is not None:
        p = predict(run.scored, loaders.holdout, device)
        y = data.train_y[held]
        row["holdout_auc"], row["holdout_pauc"] = _score(y, p, "auc"), _score(y, p, "pauc")
    if cfg.monitor_valid and data.valid_y is not None:
        p = predict(run.scored, loaders.valid, device)
        row["valid_auc"], row["valid_pauc"] = _score(data.valid_y, p, "auc"), _score(data.valid_y, p, "pauc")
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def _early_stop(best: dict, row: dict, run: _Run, cfg: CnnModelConfig, epoch: int) -> tuple[dict, bool]:
    """(best epoch so far, whether to stop): the first epoch with the highest holdout score wins;
    stop after `patience` epochs without a better one."""
    metric = cfg.early_stopping.metric
    if metric == "none":
        return best, False
    score = row[f"holdout_{metric}"]
    if math.isfinite(score) and score > best["score"]:
        best = {"score": score, "epoch": epoch + 1, "state": copy.deepcopy(run.scored.state_dict())}
    return best, epoch + 1 - best["epoch"] >= cfg.early_stopping.patience


def train_fold(store, data: FoldData, cfg: CnnModelConfig, device: torch.device, num_workers: int = 0,
               seed: int = 0, checkpoint: Path | None = None, on_step: Callable[[int, int], None] | None = None,
               label: str = "", on_epoch: Callable[[int, dict], None] | None = None,
               checkpoint_every_s: float = 0.0) -> FoldResult:
    """Train one model on a fold's training rows and predict its validation rows.

    Args:
        store: the image store (`get(id, min_side)`), also serving minority-set copies.
        data: the fold's rows (see FoldData).
        cfg: the model's params.
        device: from `select_device`.
        num_workers: DataLoader worker processes (0: decode in this process).
        seed: all randomness derives from it.
        checkpoint: file rewritten atomically at the end of an epoch (`Checkpoint`). When it exists
            and was written for the same data, params, seed and lesion_ml code, training resumes
            after its last epoch; a finished run is not trained again.
        on_step: called as on_step(epoch, step) after each optimizer step (tests).
        label: prefix for the progress bar and log lines (e.g. "resnet18 fold 2").
        on_epoch: called as on_epoch(epoch, row) after each epoch with its history row (a tuning
            trial reports `valid_pauc` to its pruner there; an exception it raises ends training).
        checkpoint_every_s: the least time between two mid-training checkpoints (0: every epoch).
    """
    key = _run_key(data, cfg, seed, store, device.type)
    backbone_spec(cfg.backbone)  # an unknown backbone fails before any image is read
    held = _holdout_split(data, cfg, seed)
    if cfg.fusion.enabled and (data.train_meta is None or data.valid_meta is None):
        raise ValueError("fusion.enabled needs metadata features for the training and validation rows")
    fit = _fit_rows(data, cfg, held)
    loaders = _loaders(store, data, cfg, held, fit, device, num_workers, seed, label)
    run = _build(cfg, data, fit[1], fit[2], device, len(loaders.train), seed)
    ckpt = Checkpoint(checkpoint, key, label, checkpoint_every_s)
    history, done, best = ckpt.restore(run, device)
    resumed = len(history)
    for epoch in range(resumed, cfg.epochs if not done else resumed):
        row = _epoch(run, loaders, epoch, cfg, data, held, device, seed, on_step, label)
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
        best, stop = _early_stop(best, row, run, cfg, epoch)
        log.info("%s epoch %d/%d: %s", label, epoch + 1, cfg.epochs,
                 ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                           if k != "epoch"))
        done = stop or epoch + 1 == cfg.epochs
        ckpt.save(run, history, best, done)
        if stop:
            log.info("%s: early stop after epoch %d; best holdout %s %.4f at epoch %d", label, epoch + 1,
                     cfg.early_stopping.metric, best["score"], best["epoch"])
            break
    if best["state"] is not None:
        run.scored.load_state_dict(best["state"])
    best_epoch = best["epoch"] if cfg.early_stopping.metric != "none" and best["epoch"] else len(history)
    start = time.perf_counter()
    valid_pred = predict(run.scored, loaders.valid, device, cfg.tta)  # the out-of-fold scores, as predict scores
    return FoldResult(run.scored, valid_pred, history, best_epoch, resumed, round(time.perf_counter() - start, 3))
