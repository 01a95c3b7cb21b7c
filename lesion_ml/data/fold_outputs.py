"""What a fold's training leaves behind, and how later stages read it back: each fold's
validation predictions (image_id, fold, target, pred) joined into one out-of-fold table, and the
metadata model's feature importances averaged over the folds (for the report).

No model library is imported here (the models arrive fitted), so code that uses this module
does not depend on lesion_ml.tabular.gbdt or lesion_ml.image.train.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

PRED_COLUMNS = ["image_id", "fold", "target"]  # then "pred"


def train_mask(folds: pd.DataFrame, fold: int) -> np.ndarray:
    """The training rows of fold `fold` in the folds table (every row of another validation fold)."""
    return (folds["fold"] != fold).to_numpy()


def valid_predictions(folds: pd.DataFrame, train: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    """The fold's validation rows of the folds table (those not in `train`) with their scores `pred`."""
    return folds.loc[~train, PRED_COLUMNS].assign(pred=pred)


def combine_predictions(frames: list[pd.DataFrame], where: Path | str) -> pd.DataFrame:
    """The folds' validation predictions as one out-of-fold table, by image_id. Raises ValueError
    (naming `where`) when an image was predicted in two folds."""
    oof = pd.concat(frames).sort_values("image_id").reset_index(drop=True)
    if oof["image_id"].duplicated().any():
        raise ValueError(f"{where}: an image was predicted in two folds; the folds overlap")
    return oof


def mean_importance(per_fold: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The metadata model's feature importances, one mapping per fold (read by the caller from
    the folds that exist, so a fold that no longer exists is never averaged in), averaged over
    the folds (a feature a fold did not use counts 0 there); empty for no folds."""
    importance: dict[str, float] = {}
    for fold in per_fold:
        for k, v in fold.items():
            importance[k] = importance.get(k, 0.0) + v / len(per_fold)
    return importance
