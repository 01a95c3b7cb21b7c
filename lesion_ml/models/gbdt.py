"""Gradient-boosted trees (LightGBM) on the selected metadata features."""
from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from lesion_ml.config import TrainGbdtConfig


def fit_gbdt(X: pd.DataFrame, y: np.ndarray, cfg: TrainGbdtConfig) -> lgb.LGBMClassifier:  # noqa: N803
    """Fit a seeded LightGBM classifier; `class_weight: balanced` reweights the rare class."""
    model = lgb.LGBMClassifier(
        n_estimators=cfg.n_estimators, learning_rate=cfg.learning_rate, num_leaves=cfg.num_leaves,
        min_child_samples=cfg.min_child_samples, subsample=cfg.subsample, subsample_freq=1,
        colsample_bytree=cfg.colsample_bytree,
        class_weight="balanced" if cfg.class_weight == "balanced" else None,
        n_jobs=cfg.n_jobs, random_state=cfg.seed, deterministic=True, force_row_wise=True, verbose=-1,
    )
    return model.fit(X, np.asarray(y))


def predict_gbdt(model: lgb.LGBMClassifier, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
    """Malignancy probabilities."""
    return model.predict_proba(X)[:, 1]
