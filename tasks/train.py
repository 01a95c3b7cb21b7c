"""Tasks of the train_gbdt and train_cnn stages: one fold each, outputs are files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import task
from prefect.cache_policies import NONE

from lesion_ml.config import CnnModelConfig, TrainGbdtConfig
from lesion_ml.data.images import ImageStore
from lesion_ml.io import atomic_path, write_json, write_parquet, write_text
from lesion_ml.models.gbdt import fit_gbdt, predict_gbdt
from lesion_ml.train import select_device, train_fold


def _fold_rows(folds: Path, fold: int) -> tuple[pd.DataFrame, np.ndarray]:
    f = pd.read_parquet(folds)
    return f, (f["fold"] != fold).to_numpy()


@task(cache_policy=NONE)
def train_gbdt_fold(features: Path, folds: Path, cfg: TrainGbdtConfig, fold: int, out: Path) -> Path:
    """Fit LightGBM on the fold's training rows; write its model and validation predictions."""
    f, train = _fold_rows(folds, fold)
    X = pd.read_parquet(features).set_index("image_id").loc[f["image_id"]]  # noqa: N806
    model = fit_gbdt(X[train], f["target"].to_numpy()[train], cfg)
    for seed, m in zip(cfg.seeds, model.models):
        write_text(m.booster_.model_to_string(), out / f"fold{fold}_seed{seed}.txt")
    write_json(dict(zip(X.columns, model.feature_importances_.round(4))), out / f"importance_fold{fold}.json")
    pred = f.loc[~train, ["image_id", "fold", "target"]].assign(pred=predict_gbdt(model, X[~train]))
    return write_parquet(pred, out / f"pred_fold{fold}.parquet")


@task(cache_policy=NONE)
def train_cnn_fold(images: Path, folds: Path, cfg: CnnModelConfig, device: str, num_workers: int,
                   fold: int, out: Path) -> Path:
    """Train one backbone on one fold; write the checkpoint, history and validation predictions."""
    store = ImageStore.from_manifest(json.loads(images.read_text()))
    f, train = _fold_rows(folds, fold)
    result = train_fold(store, f["image_id"][train].tolist(), f["target"].to_numpy()[train],
                        f["image_id"][~train].tolist(), cfg, select_device(device), num_workers,
                        seed=cfg.seed + fold)
    with atomic_path(out / f"fold{fold}.pt") as tmp:
        torch.save(result.model.state_dict(), tmp)
    write_json(result.history, out / f"history_fold{fold}.json")
    pred = f.loc[~train, ["image_id", "fold", "target"]].assign(pred=result.valid_pred)
    return write_parquet(pred, out / f"pred_fold{fold}.parquet")


@task(cache_policy=NONE)
def combine_oof(pred_files: list[Path], out: Path) -> Path:
    """Concatenate per-fold validation predictions into one out-of-fold table."""
    oof = pd.concat([pd.read_parquet(p) for p in pred_files]).sort_values("image_id").reset_index(drop=True)
    if oof["image_id"].duplicated().any():
        raise ValueError(f"{out}: an image was predicted in two folds; the folds overlap")
    return write_parquet(oof, out)
