"""Gradient-boosted trees (LightGBM) on the selected metadata features."""
from __future__ import annotations

from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd

from lesion_ml.config import TrainGbdtConfig
from lesion_ml.sampling import negatives_for, positives_plus_negatives


def _one(cfg: TrainGbdtConfig, seed: int) -> lgb.LGBMClassifier:
    return lgb.LGBMClassifier(
        n_estimators=cfg.n_estimators, learning_rate=cfg.learning_rate, num_leaves=cfg.num_leaves,
        min_child_samples=cfg.min_child_samples, subsample=cfg.subsample, subsample_freq=1,
        colsample_bytree=cfg.colsample_bytree, reg_lambda=cfg.reg_lambda,
        class_weight="balanced" if cfg.balance == "class_weight" else None,
        n_jobs=cfg.n_jobs, random_state=seed, deterministic=True, force_row_wise=True, verbose=-1,
    )


def downsample_negatives(y: np.ndarray, neg_per_pos: float, seed: int) -> np.ndarray:
    """Indices of all positives plus a random `neg_per_pos` negatives per positive (sorted; the rule
    of lesion_ml.sampling). At least one negative is kept, and a fold without positives counts
    as one positive (its `neg_per_pos` negatives), so LightGBM never gets an empty training set."""
    n_pos = int(np.count_nonzero(np.asarray(y) == 1))
    return positives_plus_negatives(y, max(1, negatives_for(max(n_pos, 1), neg_per_pos)), seed)


class SeedAverage:
    """LightGBM models fitted with different seeds; predictions are their mean probability."""

    def __init__(self, models: list[lgb.LGBMClassifier]):
        self.models = models

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        return np.mean([m.predict_proba(X) for m in self.models], axis=0)

    @property
    def feature_importances_(self) -> np.ndarray:
        return np.mean([m.booster_.feature_importance("gain") for m in self.models], axis=0)


def fit_gbdt(X: pd.DataFrame, y: np.ndarray, cfg: TrainGbdtConfig) -> SeedAverage:  # noqa: N803
    """Fit one seeded LightGBM per entry of `cfg.seeds` and average them.

    `cfg.balance`: "class_weight" reweights the rare class, "downsample" keeps all positives and
    `cfg.neg_per_pos` negatives per positive (a fresh draw per seed), "none" does neither.
    """
    y = np.asarray(y)
    models = []
    for seed in cfg.seeds:
        idx = downsample_negatives(y, cfg.neg_per_pos, seed) if cfg.balance == "downsample" else slice(None)
        models.append(_one(cfg, seed).fit(X.iloc[idx] if isinstance(X, pd.DataFrame) else X[idx], y[idx]))
    return SeedAverage(models)


def predict_gbdt(model: SeedAverage, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
    """Malignancy probabilities (mean over seeds)."""
    return model.predict_proba(X)[:, 1]


def gbdt_texts(model: SeedAverage) -> list[str]:
    """Each seed's fitted LightGBM model as LightGBM text (the order of cfg.seeds)."""
    return [m.booster_.model_to_string() for m in model.models]


def gbdt_importances(model: SeedAverage, columns: Sequence[str]) -> dict[str, float]:
    """The mean gain importance of each feature over the seeds, rounded to 4 decimals."""
    return dict(zip(columns, model.feature_importances_.round(4)))
