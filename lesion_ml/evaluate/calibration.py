"""Calibration maps fitted on out-of-fold scores, as JSON (isotonic or Platt): one home for
evaluate's cross-fitted calibration and the exported model's calibration."""
from __future__ import annotations

from typing import Any

import numpy as np

CALIBRATIONS = ("none", "isotonic", "platt")


def fit_calibrator(method: str, y: np.ndarray, p: np.ndarray) -> dict[str, Any] | None:
    """A calibration map fitted on out-of-fold scores, as JSON: isotonic (its step function) or
    Platt (logistic on the logit); None for "none"."""
    if method == "none":
        return None
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p, y)
        return {"method": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1e6).fit(np.log(p / (1 - p)).reshape(-1, 1), y)
        return {"method": "platt", "coef": float(lr.coef_[0, 0]), "intercept": float(lr.intercept_[0])}
    raise ValueError(f"unknown calibration {method!r}; allowed: none, isotonic, platt")


def apply_calibrator(cal: dict[str, Any] | None, p: np.ndarray) -> np.ndarray:
    """The calibrated probabilities (identical to the fitted scikit-learn objects' output)."""
    p = np.asarray(p, float)
    if cal is None:
        return p
    if cal["method"] == "isotonic":
        return np.interp(np.clip(p, 1e-6, 1 - 1e-6), cal["x"], cal["y"])
    q = np.clip(p, 1e-6, 1 - 1e-6)
    z = cal["coef"] * np.log(q / (1 - q)) + cal["intercept"]
    return 1 / (1 + np.exp(-z))


def cross_fit_calibration(y: np.ndarray, p: np.ndarray, fold: np.ndarray, method: str) -> np.ndarray:
    """Calibrated probabilities, fold k's map (`fit_calibrator`) fitted on the other folds' scores:
    "isotonic" (monotone, non-parametric) or "platt" (logistic on the logit)."""
    if method == "none":
        return np.asarray(p, dtype=float)
    y, p, out = np.asarray(y), np.asarray(p, dtype=float), np.full(len(p), np.nan)
    for k in np.unique(fold):
        train = fold != k
        out[~train] = apply_calibrator(fit_calibrator(method, y[train], p[train]), p[~train])
    return out
