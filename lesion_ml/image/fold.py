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
from lesion_ml.data.split import fold_data
from lesion_ml.image.inference import select_device
from lesion_ml.image.train import FoldResult, train_fold


def train_image_fold(manifest: Mapping[str, Any], folds: pd.DataFrame, fold: int, cfg: CnnModelConfig, device: str,
                     num_workers: int = 0, name: str = "", features_dir: Path | None = None,
                     minority: Path | None = None, checkpoints: Path | None = None,
                     checkpoint_every_s: float = 0.0) -> FoldResult:
    """`train_fold` of the image model `cfg` on fold `fold` of the folds table: the images of the
    store `manifest` (data/interim/images.json) and, with cfg.balance.minority_set, the copies in
    `minority`; with fusion, the fold's features `features_dir`/fold<k>.parquet. Seed cfg.seed + fold;
    resumes from `checkpoints`/fold<k>.pt (written at most every `checkpoint_every_s` seconds
    while training); `name` labels the progress log."""
    train = train_mask(folds, fold)
    data = fold_data(folds, train, cfg, features_dir / f"fold{fold}.parquet" if features_dir is not None else None,
                     minority)
    with open_store(manifest, minority / "images.hdf5" if cfg.balance.minority_set else None) as store:
        return train_fold(store, data, cfg, select_device(device), num_workers, seed=cfg.seed + fold,
                          checkpoint=checkpoints / f"fold{fold}.pt" if checkpoints else None,
                          label=f"{name} fold {fold}".strip(), checkpoint_every_s=checkpoint_every_s)


def cnn_history(result: FoldResult) -> dict[str, Any]:
    """The record of one fold's training (history_fold<k>.json): the best epoch, the epoch it
    resumed from, each epoch's metrics and the rate of predicting the validation images."""
    n_valid = len(result.valid_pred)
    return {"best_epoch": result.best_epoch, "resumed_from_epoch": result.resumed_from,
            "epochs": result.history,
            "valid_predict": {"images": n_valid, "seconds": result.predict_seconds,
                              "images_per_s": round(n_valid / max(result.predict_seconds, 1e-9), 1)}}
