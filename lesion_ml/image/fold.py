"""One fold of an image model as the train_cnn stage runs it: trained on the fold's training rows
(with the fold's metadata features for fusion and the minority set's copies when configured),
resumable from its checkpoint, and the record of the run."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from lesion_ml.config import CnnModelConfig
from lesion_ml.data.fold_outputs import train_mask
from lesion_ml.data.images import open_store
from lesion_ml.image.data import fold_data, fold_meta
from lesion_ml.image.inference import select_device
from lesion_ml.image.train import FoldResult, train_fold


def train_image_fold(manifest: Mapping[str, Any], folds: pd.DataFrame, cfg: CnnModelConfig, *, fold: int,
                     device: str, num_workers: int = 0, name: str = "", features: pd.DataFrame | None = None,
                     minority_index: pd.DataFrame | None = None, minority_images: Path | None = None,
                     checkpoint: Path | None = None, checkpoint_every_s: float = 0.0) -> FoldResult:
    """`train_fold` of the image model `cfg` on fold `fold` of the folds table.

    Args:
        manifest: the image store's manifest (the ingest stage's).
        features: with fusion, the fold's selected metadata features (one row per image_id).
        minority_index, minority_images: with cfg.balance.minority_set, the minority set's index
            (copy_id, source_id) and the HDF5 file of its copies.
        checkpoint: the training state's file, resumed from after a kill and written at most every
            `checkpoint_every_s` seconds while training.
        name: labels the progress log. The seed is cfg.seed + fold.
    """
    train = train_mask(folds, fold)
    meta = fold_meta(features, folds["image_id"]) if cfg.fusion.enabled else None
    data = fold_data(folds, train, cfg, meta=meta, minority_index=minority_index,
                     minority_source=str(minority_images.parent) if minority_images else "the minority set")
    with open_store(manifest, minority_images if cfg.balance.minority_set else None) as store:
        return train_fold(store, data, cfg, select_device(device), num_workers, seed=cfg.seed + fold,
                          checkpoint=checkpoint, label=f"{name} fold {fold}".strip(),
                          checkpoint_every_s=checkpoint_every_s)


def cnn_history(result: FoldResult) -> dict[str, Any]:
    """The record of one fold's training (history_fold<k>.json): the best epoch, the epoch it
    resumed from, each epoch's metrics and the rate of predicting the validation images."""
    n_valid = len(result.valid_pred)
    return {"best_epoch": result.best_epoch, "resumed_from_epoch": result.resumed_from,
            "epochs": result.history,
            "valid_predict": {"images": n_valid, "seconds": result.predict_seconds,
                              "images_per_s": round(n_valid / max(result.predict_seconds, 1e-9), 1)}}
