"""Task of the train_gbdt stage: one fold of the metadata model; outputs are files."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lesion_ml.config import TrainGbdtConfig
from lesion_ml.data.fold_outputs import train_mask, valid_predictions
from lesion_ml.io import write_json, write_parquet, write_text
from lesion_ml.tabular.gbdt import fit_gbdt, gbdt_importances, gbdt_texts, predict_gbdt
from tasks.cache import cached_task


@cached_task(outputs=('out_boosters', 'out_importance', 'out_pred'))
def train_gbdt_fold(*, features: Path, folds: Path, cfg: TrainGbdtConfig, fold: int, out_boosters: list[Path],
                    out_importance: Path, out_pred: Path) -> Path:
    """Fit LightGBM on the fold's training rows; write its models (one LightGBM text file per seed
    of cfg.seeds, in `out_boosters`), feature importances and validation predictions."""
    f = pd.read_parquet(folds)
    train = train_mask(f, fold)
    X = pd.read_parquet(features).set_index("image_id").loc[f["image_id"]]  # noqa: N806
    model = fit_gbdt(X[train], f["target"].to_numpy()[train], cfg)
    for text, path in zip(gbdt_texts(model), out_boosters, strict=True):
        write_text(text, path)
    write_json(gbdt_importances(model, X.columns), out_importance)
    return write_parquet(valid_predictions(f, train, predict_gbdt(model, X[~train])), out_pred)
