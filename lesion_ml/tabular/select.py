"""Statistical feature selection fitted on a training fold: correlation pruning, then the k best
features by mutual information, ANOVA F, chi-squared, L1-logistic or GBDT importance."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin, chi2, f_classif, mutual_info_classif
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from lesion_ml.sampling import positives_plus_negatives

METHODS = ("mutual_info", "f_classif", "chi2", "l1", "gbdt")


def subsample_rows(y: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted row indices: all rows if `max_rows` is None or not exceeded, else every positive
    plus randomly chosen negatives up to `max_rows` rows in all (lesion_ml.sampling's rule; when
    the positives alone exceed `max_rows`, all of them and no negative)."""
    y = np.asarray(y)
    if max_rows is None or len(y) <= max_rows:
        return np.arange(len(y))
    return positives_plus_negatives(y, max_rows - int(np.count_nonzero(y == 1)), seed)


class CorrelationPruner(SelectorMixin, BaseEstimator):
    """Drop the later of every pair of columns whose |Pearson r| on the training rows exceeds
    `threshold` (columns are visited in order; constant columns are dropped too)."""

    def __init__(self, threshold: float | None = 0.95):
        self.threshold = threshold

    def fit(self, X, y=None):  # noqa: N803
        X = np.asarray(X, dtype=np.float64)  # noqa: N806
        n = X.shape[1]
        keep = np.ones(n, bool)
        std = X.std(0)
        keep &= std > 0
        if self.threshold is not None and n > 1:
            Z = (X - X.mean(0)) / np.where(std > 0, std, 1)  # noqa: N806
            corr = np.abs(Z.T @ Z / len(Z))
            for j in range(n):
                if keep[j]:
                    later = np.arange(j + 1, n)
                    keep[later[corr[j, later] > self.threshold]] = False
        self.support_ = keep
        self.n_features_in_ = n
        return self

    def _get_support_mask(self):
        return self.support_


class KBestSelector(SelectorMixin, BaseEstimator):
    """Keep the `k` highest-scoring columns by `method`, scored on at most `max_rows` training
    rows (all positives kept, negatives subsampled) so selection stays fast at 400k rows. The
    values come from params.yaml prepare.select (defaults in lesion_ml/config/)."""

    def __init__(self, method: str, k: int, max_rows: int | None, seed: int):
        self.method = method
        self.k = k
        self.max_rows = max_rows
        self.seed = seed

    def fit(self, X, y):  # noqa: N803
        if self.method not in METHODS:
            raise ValueError(f"unknown selection method {self.method!r}; allowed: {list(METHODS)} "
                             "(params.yaml prepare.select.method)")
        X, y = self._subsample(np.asarray(X, dtype=np.float64), np.asarray(y))  # noqa: N806
        self.scores_ = np.nan_to_num(self._score(X, y), nan=0.0)
        k = min(self.k, X.shape[1])
        order = np.lexsort((np.arange(X.shape[1]), -self.scores_))  # ties: earlier column wins
        self.support_ = np.zeros(X.shape[1], bool)
        self.support_[order[:k]] = True
        self.n_features_in_ = X.shape[1]
        return self

    def _subsample(self, X, y):  # noqa: N803
        idx = subsample_rows(y, self.max_rows, self.seed)
        return X[idx], y[idx]

    def _score(self, X, y):  # noqa: N803
        if self.method == "mutual_info":
            return mutual_info_classif(X, y, random_state=self.seed)
        if self.method == "f_classif":
            return f_classif(X, y)[0]
        if self.method == "chi2":  # chi-squared needs non-negative inputs: min-max scale first
            return chi2(MinMaxScaler().fit_transform(X), y)[0]
        if self.method == "l1":
            Xs = StandardScaler().fit_transform(X)  # noqa: N806
            lr = LogisticRegression(l1_ratio=1.0, solver="saga", C=0.05,
                                    class_weight="balanced", max_iter=300, random_state=self.seed)
            return np.abs(lr.fit(Xs, y).coef_[0])
        import lightgbm as lgb

        model = lgb.LGBMClassifier(n_estimators=100, num_leaves=15, learning_rate=0.1, subsample=0.8,
                                   subsample_freq=1, class_weight="balanced", importance_type="gain",
                                   random_state=self.seed, n_jobs=2, verbose=-1, deterministic=True)
        return model.fit(X, y).feature_importances_.astype(float)

    def _get_support_mask(self):
        return self.support_
