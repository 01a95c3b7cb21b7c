"""Fold-safe combinations of out-of-fold scores: mean and rank-average ensembles and a stacked
LightGBM over the metadata features plus the image models' scores (cross-fitted calibration:
lesion_ml.evaluate.calibration).

"Fold-safe": whatever is fitted for validation fold k (the stacker, a calibrator) sees only
rows of the other folds, so fold k's numbers stay out-of-fold.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from lesion_ml.config import TrainGbdtConfig
from lesion_ml.tabular.gbdt import fit_gbdt, predict_gbdt


def mean_ensemble(scores: pd.DataFrame) -> np.ndarray:
    """The mean probability of the columns of `scores` (one per model)."""
    return scores.mean(axis=1).to_numpy()


def rank_ensemble(scores: pd.DataFrame) -> np.ndarray:
    """The mean of each model's percentile rank (0..1]: models on different probability scales
    (downsampled LightGBM, class-weighted CNNs) count equally."""
    ranks = np.column_stack([rankdata(scores[c]) / len(scores) for c in scores.columns])
    return ranks.mean(axis=1)


def stack_oof(features_of_fold: Callable[[int], pd.DataFrame], image_scores: pd.DataFrame, fold: np.ndarray,
              y: np.ndarray, cfg: TrainGbdtConfig) -> np.ndarray:
    """Out-of-fold predictions of a LightGBM over the metadata features plus image OOF scores.

    Args:
        features_of_fold: k -> that fold's selected metadata features (fitted on its training
            rows), one row per image in the order of `image_scores`.
        image_scores: out-of-fold scores of the image models, one column each.
        fold: each row's validation fold.
        y: labels.
        cfg: LightGBM params (balancing, seeds) of the metadata model.

    For fold k the stacker is fitted on the rows of the other folds only.
    """
    out = np.full(len(y), np.nan)
    for k in np.unique(fold):
        X = pd.concat([features_of_fold(int(k)).reset_index(drop=True),  # noqa: N806
                       image_scores.add_prefix("score_").reset_index(drop=True)], axis=1)
        train = fold != k
        model = fit_gbdt(X[train], y[train], cfg)
        out[~train] = predict_gbdt(model, X[~train])
    return out
