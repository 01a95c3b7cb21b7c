"""Task of the train_gbdt stage: one fold of the metadata model; outputs are files."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lesion_ml.config import TrainGbdtConfig
from lesion_ml.data.fold_outputs import train_mask, valid_predictions, write_gbdt_fold
from lesion_ml.io import write_parquet
from lesion_ml.tabular.gbdt import fit_gbdt, predict_gbdt
from tasks.cache import cached_task


@cached_task(outputs=('out',))
def train_gbdt_fold(features: Path, folds: Path, cfg: TrainGbdtConfig, fold: int, out: Path) -> Path:
    """Fit LightGBM on the fold's training rows; write its model and validation predictions."""
    f = pd.read_parquet(folds)
    train = train_mask(f, fold)
    X = pd.read_parquet(features).set_index("image_id").loc[f["image_id"]]  # noqa: N806
    model = fit_gbdt(X[train], f["target"].to_numpy()[train], cfg)
    write_gbdt_fold(model, X.columns, cfg.seeds, fold, out)
    return write_parquet(valid_predictions(f, train, predict_gbdt(model, X[~train])), out / f"pred_fold{fold}.parquet")
