"""How models' scores are combined and calibrated: one estimator per kind, used by evaluation
(on the out-of-fold scores) and by the exported model (fitted on every row, saved as JSON).

Each estimator has `fit`, `predict`, `to_json` and `from_json`: evaluate scores the out-of-fold
rows with exactly the rule that `lesion predict` applies to new images, so the two cannot drift.

- `MeanEnsemble`: the mean probability of its components.
- `RankEnsemble`: the mean of each component's percentile among reference scores (its
  out-of-fold scores, kept as quantiles), so models on different probability scales count
  equally.
- `StackEnsemble`: LightGBM over the metadata features plus the image models' scores.
- `Calibrator`: isotonic or Platt calibration of a score into a probability ("none": identity).

`cross_fit` and `cross_fit_calibration` give fold-safe out-of-fold versions of the supervised ones:
what is fitted for validation fold k sees only rows of the other folds.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from lesion_ml.config import TrainGbdtConfig
from lesion_ml.tabular.gbdt import fit_gbdt

CALIBRATIONS = ("none", "isotonic", "platt")
Scores = Mapping[str, np.ndarray] | pd.DataFrame


def _column(scores: Scores, name: str) -> np.ndarray:
    return np.asarray(scores[name], dtype=float)


class MeanEnsemble:
    """The mean probability of the `components`' scores."""

    kind = "mean"

    def __init__(self, components: Sequence[str]):
        self.components = list(components)

    def fit(self, scores: Scores, y: np.ndarray | None = None, features: pd.DataFrame | None = None) -> MeanEnsemble:
        return self

    def predict(self, scores: Scores, features: pd.DataFrame | None = None) -> np.ndarray:
        return np.mean([_column(scores, c) for c in self.components], axis=0)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "components": self.components}

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> MeanEnsemble:
        return cls(spec["components"])


def percentile(scores: np.ndarray, reference: Sequence[float]) -> np.ndarray:
    """Each score's position (0..1) among `reference` (sorted quantiles of a model's scores):
    linear between the quantiles, the mean level where several quantiles are equal (ties), 0 below
    the lowest and 1 above the highest."""
    ref = np.asarray(reference, dtype=float)
    levels = np.linspace(0, 1, len(ref))
    xp, inv = np.unique(ref, return_inverse=True)
    fp = np.bincount(inv, weights=levels) / np.bincount(inv)
    return np.interp(np.asarray(scores, dtype=float), xp, fp)


class RankEnsemble:
    """The mean percentile of the `components`' scores, each among its own reference scores
    (`points` quantiles of the scores it was fitted on: no labels are used)."""

    kind = "rank"

    def __init__(self, components: Sequence[str], points: int = 2001):
        self.components = list(components)
        self.points = points
        self.reference_: dict[str, list[float]] = {}

    def fit(self, scores: Scores, y: np.ndarray | None = None, features: pd.DataFrame | None = None) -> RankEnsemble:
        levels = np.linspace(0, 1, self.points)
        self.reference_ = {c: [float(v) for v in np.quantile(_column(scores, c), levels)] for c in self.components}
        return self

    def predict(self, scores: Scores, features: pd.DataFrame | None = None) -> np.ndarray:
        return np.mean([percentile(_column(scores, c), self.reference_[c]) for c in self.components], axis=0)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "components": self.components, "reference": self.reference_}

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> RankEnsemble:
        points = {len(r) for r in spec["reference"].values()}
        out = cls(spec["components"], points.pop() if len(points) == 1 else 2001)
        out.reference_ = {c: list(spec["reference"][c]) for c in out.components}
        return out


class StackEnsemble:
    """LightGBM (the metadata model's settings `cfg`: balancing, seeds) over the metadata
    features plus a `score_<component>` column per component. Fitted models are kept as
    LightGBM text, the form the exported model stores, and predict through it."""

    kind = "stack"

    def __init__(self, components: Sequence[str], cfg: TrainGbdtConfig | None = None):
        self.components = list(components)
        self.cfg = cfg
        self.columns_: list[str] = []
        self.models_: list[str] = []
        self._boosters: list[Any] | None = None

    def inputs(self, scores: Scores, features: pd.DataFrame) -> pd.DataFrame:
        """The stacker's input table: `features` and one score column per component."""
        X = features.reset_index(drop=True).copy()  # noqa: N806
        for c in self.components:
            X[f"score_{c}"] = _column(scores, c)
        return X

    def fit(self, scores: Scores, y: np.ndarray, features: pd.DataFrame) -> StackEnsemble:
        if self.cfg is None:
            raise ValueError("a StackEnsemble needs the LightGBM settings (cfg) to be fitted")
        X = self.inputs(scores, features)  # noqa: N806
        model = fit_gbdt(X, np.asarray(y), self.cfg)
        self.columns_ = list(X.columns)
        self.models_ = [m.booster_.model_to_string() for m in model.models]
        self._boosters = None
        return self

    def boosters(self) -> list[Any]:
        """The fitted LightGBM boosters (built from their text once)."""
        if self._boosters is None:
            self._boosters = [lgb.Booster(model_str=m) for m in self.models_]
        return self._boosters

    def predict(self, scores: Scores, features: pd.DataFrame | None = None) -> np.ndarray:
        if features is None:
            raise ValueError("the stack needs each image's metadata features")
        X = self.inputs(scores, features)[self.columns_].to_numpy(np.float64)  # noqa: N806
        return np.mean([b.predict(X) for b in self.boosters()], axis=0)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "components": self.components, "columns": self.columns_, "models": self.models_}

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> StackEnsemble:
        out = cls(spec["components"])
        out.columns_, out.models_ = list(spec["columns"]), list(spec["models"])
        return out


COMBINERS = {c.kind: c for c in (MeanEnsemble, RankEnsemble, StackEnsemble)}


def combiner(kind: str, components: Sequence[str], cfg: TrainGbdtConfig | None = None):
    """A fresh estimator of `kind` (mean, rank or stack) over `components`."""
    if kind == "stack":
        return StackEnsemble(components, cfg)
    if kind not in COMBINERS:
        raise ValueError(f"unknown combination {kind!r}; allowed: {sorted(COMBINERS)}")
    return COMBINERS[kind](components)


def combiner_from_json(spec: Mapping[str, Any]):
    """The estimator `to_json` wrote."""
    if spec.get("kind") not in COMBINERS:
        raise ValueError(f"unknown combination {spec.get('kind')!r}; allowed: {sorted(COMBINERS)}")
    return COMBINERS[spec["kind"]].from_json(spec)


def cross_fit(make: Callable[[], Any], scores: pd.DataFrame, y: np.ndarray, fold: np.ndarray,
              features_of_fold: Callable[[int], pd.DataFrame] | None = None) -> np.ndarray:
    """Out-of-fold predictions of a supervised combiner: for validation fold k, `make()` is fitted
    on the rows of the other folds (with fold k's metadata features, `features_of_fold(k)`, one
    row per row of `scores`, fitted on fold k's training rows) and predicts fold k's rows."""
    out = np.full(len(y), np.nan)
    y = np.asarray(y)
    for k in np.unique(fold):
        train = np.asarray(fold) != k
        feats = features_of_fold(int(k)).reset_index(drop=True) if features_of_fold is not None else None
        model = make().fit(scores[train], y[train], None if feats is None else feats[train])
        out[~train] = model.predict(scores[~train], None if feats is None else feats[~train])
    return out


class Calibrator:
    """A score -> probability map fitted on out-of-fold scores: "isotonic" (a monotone step
    function), "platt" (logistic regression on the logit) or "none" (the identity)."""

    def __init__(self, method: str = "none"):
        if method not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {method!r}; allowed: {', '.join(CALIBRATIONS)}")
        self.method = method
        self.params_: dict[str, Any] = {}

    def fit(self, y: np.ndarray, p: np.ndarray) -> Calibrator:
        p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
        if self.method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p, y)
            self.params_ = {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
        elif self.method == "platt":
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1e6).fit(np.log(p / (1 - p)).reshape(-1, 1), y)
            self.params_ = {"coef": float(lr.coef_[0, 0]), "intercept": float(lr.intercept_[0])}
        return self

    def predict(self, p: np.ndarray) -> np.ndarray:
        """The calibrated probabilities (those of the fitted scikit-learn objects)."""
        p = np.asarray(p, float)
        if self.method == "none":
            return p
        q = np.clip(p, 1e-6, 1 - 1e-6)
        if self.method == "isotonic":
            return np.interp(q, self.params_["x"], self.params_["y"])
        z = self.params_["coef"] * np.log(q / (1 - q)) + self.params_["intercept"]
        return 1 / (1 + np.exp(-z))

    def to_json(self) -> dict[str, Any] | None:
        """{"method": ..., parameters}; None for "none"."""
        return None if self.method == "none" else {"method": self.method, **self.params_}

    @classmethod
    def from_json(cls, spec: Mapping[str, Any] | None) -> Calibrator:
        if spec is None:
            return cls("none")
        out = cls(spec["method"])
        out.params_ = {k: v for k, v in spec.items() if k != "method"}
        return out


def cross_fit_calibration(y: np.ndarray, p: np.ndarray, fold: np.ndarray, method: str) -> np.ndarray:
    """Calibrated out-of-fold probabilities: fold k's `Calibrator` fitted on the other folds' scores."""
    y, p, out = np.asarray(y), np.asarray(p, dtype=float), np.full(len(p), np.nan)
    if method == "none":
        return p
    for k in np.unique(fold):
        train = np.asarray(fold) != k
        out[~train] = Calibrator(method).fit(y[train], p[train]).predict(p[~train])
    return out
