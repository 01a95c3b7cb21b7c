from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lesion_ml.config import TrainGbdtConfig
from lesion_ml.evaluate.analysis import bootstrap_intervals, calibration, choose_threshold, subgroup_table
from lesion_ml.evaluate.combine import MeanEnsemble, RankEnsemble, StackEnsemble, cross_fit, cross_fit_calibration
from lesion_ml.evaluate.metrics import classification_metrics
from lesion_ml.evaluate.report import build_report


def _data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    p = 1 / (1 + np.exp(-(2.0 * y - 1 + rng.normal(0, 1.2, n))))
    groups = np.array([f"P{i // 4}" for i in range(n)])
    return y, p, groups


def test_bootstrap_intervals_contain_the_point_estimate_and_narrow_with_more_patients():
    y, p, g = _data()
    m = classification_metrics(y, p, 0.5)
    ci = bootstrap_intervals(y, p, g, 0.5, n_boot=300, seed=1)
    for key, point in (("roc_auc", m["roc_auc"]), ("pauc_80", m["pauc_80"]), ("pr_auc", m["pr_auc"]),
                       ("sensitivity", m["recall"]), ("specificity", m["specificity"])):
        lo, hi = ci[key]
        assert lo <= point <= hi and lo < hi, key
    y2, p2, g2 = _data(4000, 1)
    wide, narrow = ci["roc_auc"], bootstrap_intervals(y2, p2, g2, 0.5, n_boot=300, seed=1)["roc_auc"]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert bootstrap_intervals(y, p, g, 0.5, n_boot=50, seed=3) == bootstrap_intervals(y, p, g, 0.5, n_boot=50, seed=3)


@pytest.mark.parametrize("case", ["continuous", "ties", "few_patients"])
def test_bootstrap_resample_metrics_equal_sklearn_on_the_resampled_rows(case):
    """Each resample scored from per-patient tallies equals scikit-learn on the concatenated rows."""
    from lesion_ml.evaluate.analysis import RANKING, _PatientCurves

    y, p, g = _data(500, 4)
    if case == "ties":  # ties within and across classes, and whole patients tied
        p = np.round(p, 1)
    if case == "few_patients":  # big patients, one without malignant rows, one all malignant
        g = np.array([f"P{i % 7}" for i in range(len(y))])
        y[g == "P3"], y[g == "P5"] = 0, 1
    codes, uniques = pd.factorize(pd.Series(g))
    thr = 0.45
    curve = _PatientCurves(y, p, codes, len(uniques), p >= thr)
    rng = np.random.default_rng(0)
    counts = np.stack([np.bincount(rng.integers(0, len(uniques), len(uniques)), minlength=len(uniques))
                       for _ in range(40)]).astype(float)
    got = curve.metrics(counts)
    rows_of = [np.flatnonzero(codes == k) for k in range(len(uniques))]
    checked = 0
    for r, c in enumerate(counts):
        idx = np.concatenate([np.tile(rows_of[k], int(c[k])) for k in range(len(uniques))])
        yb, pb = y[idx], p[idx]
        if 0 < yb.sum() < len(yb):
            for name, fn in RANKING.items():
                assert got[name][r] == pytest.approx(fn(yb, pb), abs=1e-12), (name, r)
            checked += 1
        else:
            assert np.isnan(got["roc_auc"][r])
        if yb.sum():
            assert got["sensitivity"][r] == pytest.approx((pb[yb == 1] >= thr).mean(), abs=1e-12)
        if (yb == 0).any():
            assert got["specificity"][r] == pytest.approx((pb[yb == 0] < thr).mean(), abs=1e-12)
    assert checked >= 20


def test_threshold_for_target_sensitivity_is_the_highest_that_reaches_it():
    y, p, _ = _data()
    t = choose_threshold(y, p, "sensitivity", 0.9)
    assert (p[y == 1] >= t).mean() >= 0.9
    above = np.sort(np.unique(p))[np.sort(np.unique(p)) > t][0]  # the next higher score misses the target
    assert (p[y == 1] >= above).mean() < 0.9
    tj = choose_threshold(y, p, "youden")
    j = lambda th: (p[y == 1] >= th).mean() + (p[y == 0] < th).mean()  # noqa: E731
    assert j(tj) >= max(j(th) for th in np.quantile(p, np.linspace(0.01, 0.99, 99))) - 1e-9
    with pytest.raises(ValueError, match="needs both classes"):
        choose_threshold(np.zeros(5), np.linspace(0, 1, 5))


def test_calibration_error_is_small_for_calibrated_scores_and_large_for_shifted_ones():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert calibration(y, p)["ece"] < 0.02
    assert calibration(y, p**4)["ece"] > 0.15
    table = calibration(y, p, 5)["reliability"]
    assert len(table) == 5 and sum(b["n"] for b in table) == 20000


def test_cross_fitted_calibration_never_uses_the_fold_it_maps():
    y, p, _ = _data()
    fold = np.arange(len(y)) % 3
    a = cross_fit_calibration(y, p, fold, "isotonic")
    y2 = y.copy()
    y2[fold == 0] = 1 - y2[fold == 0]  # change fold 0's labels only
    b = cross_fit_calibration(y2, p, fold, "isotonic")
    np.testing.assert_array_equal(a[fold == 0], b[fold == 0])
    assert not np.array_equal(a[fold == 1], b[fold == 1])
    platt = cross_fit_calibration(y, p, fold, "platt")
    assert ((platt > 0) & (platt < 1)).all()


def test_stack_sees_only_out_of_fold_rows():
    """The stack's predictions for fold k must not depend on fold k's labels; a stacker fitted on
    all rows (in-fold leakage) fails this."""
    y, p, _ = _data(400)
    fold = np.arange(len(y)) % 4
    feats = pd.DataFrame({"a": np.random.default_rng(0).normal(size=len(y)) + y, "b": np.arange(len(y)) % 7})
    scores = pd.DataFrame({"cnn_x": p})
    cfg = TrainGbdtConfig(n_estimators=30, seeds=(1,), n_jobs=1, balance="none")
    def stack_oof(labels):
        return cross_fit(lambda: StackEnsemble(["cnn_x"], cfg), scores, labels, fold, lambda k: feats)

    a = stack_oof(y)
    y2 = y.copy()
    y2[fold == 2] = 1 - y2[fold == 2]
    b = stack_oof(y2)
    np.testing.assert_array_equal(a[fold == 2], b[fold == 2])
    assert not np.array_equal(a[fold == 0], b[fold == 0])

    from lesion_ml.tabular.gbdt import fit_gbdt, predict_gbdt  # what leakage would look like

    X = pd.concat([feats, scores.add_prefix("score_")], axis=1)  # noqa: N806
    leaky = [predict_gbdt(fit_gbdt(X, yy, cfg), X[fold == 2]) for yy in (y, y2)]
    assert not np.array_equal(*leaky)


def test_mean_and_rank_ensembles():
    s = pd.DataFrame({"a": [0.1, 0.4, 0.9], "b": [0.001, 0.002, 0.003]})
    np.testing.assert_allclose(MeanEnsemble(["a", "b"]).fit(s).predict(s), [0.0505, 0.201, 0.4515])
    rank = RankEnsemble(["a", "b"]).fit(s)
    np.testing.assert_allclose(rank.predict(s), [0.0, 0.5, 1.0])  # each row's place among the fitted scores
    np.testing.assert_allclose(rank.predict({"a": np.array([0.0, 1.0]), "b": np.array([0.0015, 0.0025])}),
                               [0.125, 0.875])  # below / above the reference, between two quantiles


def test_small_groups_are_pooled_into_other():
    y, p, _ = _data(200)
    table = pd.DataFrame({"target": y, "sex": ["male"] * 180 + ["a"] * 6 + ["b"] * 6 + ["c"] * 8})
    rows = {r["group"]: r["n"] for r in subgroup_table(table, p, 0.5) if r["attribute"] == "sex"}
    assert rows == {"male": 180, "other": 20}


def test_subgroups_pool_small_groups_and_report_per_group_sensitivity():
    y, p, _ = _data(200)
    table = pd.DataFrame({"target": y, "sex": ["male"] * 100 + ["female"] * 95 + ["other-rare"] * 5,
                          "age_approx": np.r_[np.full(150, 55.0), np.full(50, 25.0)]})
    rows = subgroup_table(table, p, 0.5)
    sex = {r["group"]: r for r in rows if r["attribute"] == "sex"}
    assert set(sex) == {"male", "female"}  # the 5-row group, pooled, is still under 10 rows: left out
    male = y[:100] == 1
    assert sex["male"]["sensitivity"] == round(float((p[:100][male] >= 0.5).mean()), 4)
    ages = {r["group"]: r["n"] for r in rows if r["attribute"] == "age_band"}
    assert ages == {"50-69": 150, "<30": 50}


def test_report_is_self_contained_html_with_figures_and_tables():
    y, p, g = _data(300)
    m = classification_metrics(y, p, 0.3)
    m.update(fold_roc_auc={"0": 0.8, "1": 0.7}, ci95=bootstrap_intervals(y, p, g, 0.3, 20),
             calibration={**calibration(y, p), "reliability": calibration(y, p)["reliability"]})
    models = {"gbdt": m, "cnn_x": {**m, "roc_auc": 0.5}}
    html = build_report(y, {"gbdt": p, "cnn_x": p[::-1]}, models, {"gbdt": subgroup_table(
        pd.DataFrame({"target": y, "sex": "male"}), p, 0.3)}, {"feat_a": 2.0, "feat_b": 1.0},
        {"n": 300, "n_malignant": int(y.sum()), "n_patients": 75, "n_folds": 2, "n_boot": 20,
         "threshold_rule": "test"})
    assert html.count("data:image/png;base64,") == 5 and "http" not in html.replace("http-equiv", "")
    assert "<h2>Comparison</h2>" in html and html.index(">gbdt<") < html.index(">cnn_x<")  # best first
    assert "Subgroups: gbdt" in html and "<script" not in html
