"""What a fold's training leaves behind, and how later stages read it back: each fold's
validation predictions (image_id, fold, target, pred) joined into one out-of-fold table, and the
metadata model's boosters and feature importances per fold (averaged over the folds for the report).

No model library is imported here (the models arrive fitted), so code that uses this module
does not depend on lesion_ml.tabular.gbdt or lesion_ml.image.train.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesion_ml.io import write_json, write_text

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


def write_gbdt_fold(model: Any, columns: Sequence[str], seeds: Sequence[int], fold: int, out: Path) -> None:
    """The metadata model of fold `fold` (`fit_gbdt`'s, one LightGBM model per seed) as
    `out`/fold<k>_seed<s>.txt (LightGBM text) and its feature importances as importance_fold<k>.json."""
    for seed, m in zip(seeds, model.models):
        write_text(m.booster_.model_to_string(), out / f"fold{fold}_seed{seed}.txt")
    write_json(dict(zip(columns, model.feature_importances_.round(4))), out / f"importance_fold{fold}.json")


def mean_importance(files: Sequence[Path]) -> dict[str, float]:
    """The feature importances of `write_gbdt_fold`'s folds, one file per fold (named by the caller:
    no folder is searched, so a file of a fold that no longer exists is never averaged in),
    averaged over the folds (a feature a fold did not use counts 0 there); empty for no files."""
    importance: dict[str, float] = {}
    for f in files:
        for k, v in json.loads(Path(f).read_text()).items():
            importance[k] = importance.get(k, 0.0) + v / len(files)
    return importance
