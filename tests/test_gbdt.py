from __future__ import annotations

import numpy as np
import pandas as pd

from lesion_ml.config import TrainGbdtConfig
from lesion_ml.tabular.gbdt import downsample_negatives, fit_gbdt, predict_gbdt

SMALL = dict(n_estimators=5, num_leaves=4, min_child_samples=2, n_jobs=1)


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 4)), columns=list("abcd"))
    y = (X["a"] + 0.5 * rng.normal(size=n) > 1.2).astype(int).to_numpy()
    return X, y


def test_downsampling_keeps_all_positives_and_the_ratio():
    y = np.array([1] * 5 + [0] * 200)
    idx = downsample_negatives(y, 3, seed=1)
    assert (y[idx] == 1).sum() == 5 and (y[idx] == 0).sum() == 15
    assert not np.array_equal(idx, downsample_negatives(y, 3, seed=2))


def test_seeded_and_averaged_over_seeds():
    X, y = _data()
    a = predict_gbdt(fit_gbdt(X, y, TrainGbdtConfig(**SMALL, seeds=(1, 2))), X)
    b = predict_gbdt(fit_gbdt(X, y, TrainGbdtConfig(**SMALL, seeds=(1, 2))), X)
    one = predict_gbdt(fit_gbdt(X, y, TrainGbdtConfig(**SMALL, seeds=(1,), subsample=0.5)), X)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (len(X),) and ((a >= 0) & (a <= 1)).all() and not np.allclose(a, one)


def test_balancing_options_learn_the_signal():
    X, y = _data(600)
    for balance in ("class_weight", "downsample", "none"):
        model = fit_gbdt(X, y, TrainGbdtConfig(n_estimators=30, num_leaves=4, n_jobs=1, balance=balance,
                                               neg_per_pos=2))
        p = predict_gbdt(model, X)
        assert p[y == 1].mean() > p[y == 0].mean(), balance
        assert len(model.feature_importances_) == 4 and model.feature_importances_[0] == model.feature_importances_.max()


def test_balance_changes_what_the_model_sees():
    """`balance` is not ignored: the prior the model learns moves with what it was shown. Without
    balancing its mean probability is the base rate; downsampling to 2 negatives per positive
    shows it a third positives, and class weights count the positives as often as the negatives."""
    X, y = _data(3000, seed=3)
    base = y.mean()
    assert 0.03 < base < 0.2
    mean = {b: predict_gbdt(fit_gbdt(X, y, TrainGbdtConfig(**{**SMALL, "n_estimators": 20}, balance=b,
                                                           neg_per_pos=2)), X).mean()
            for b in ("none", "downsample", "class_weight")}
    assert abs(mean["none"] - base) < 0.02
    assert 0.25 < mean["downsample"] < 0.45 and mean["class_weight"] > 0.3, (base, mean)
