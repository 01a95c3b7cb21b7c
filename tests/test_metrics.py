from __future__ import annotations

import math

import numpy as np
import pytest

from lesion_ml.evaluate.metrics import classification_metrics, partial_auc


def test_pauc_perfect_and_reversed():
    y = np.array([0, 0, 0, 1, 1])
    assert partial_auc(y, np.array([0.1, 0.2, 0.3, 0.8, 0.9])) == pytest.approx(0.2)
    assert partial_auc(y, np.array([0.9, 0.8, 0.7, 0.2, 0.1])) == pytest.approx(0.0, abs=1e-12)


def test_pauc_matches_hand_computed_area_above_80_tpr():
    # ROC points (fpr, tpr): (0,0) (0,.5) (.5,.5) (.5,1) (1,1) -- area above tpr=0.8:
    # on fpr in [0, .5) tpr=.5 < .8 contributes 0; on [.5, 1] tpr=1 contributes .5 * .2 = 0.1
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.1])
    assert partial_auc(y, p) == pytest.approx(0.1)


def test_thresholded_metrics_and_confusion_matrix():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.6, 0.7, 0.4, 0.9, 0.2])
    m = classification_metrics(y, p, threshold=0.5)
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    assert m["recall"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(4 / 6)
    assert m["roc_auc"] == pytest.approx(8 / 9)


def test_single_class_gives_nan_ranking_metrics():
    m = classification_metrics(np.array([0, 0]), np.array([0.2, 0.7]))
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pauc_80"])
    assert m["confusion_matrix"] == [[1, 1], [0, 0]]


def test_curve_points_are_few_at_many_negatives_and_keep_average_precision():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from lesion_ml.evaluate.metrics import curve_points

    rng = np.random.default_rng(0)
    y = np.zeros(50_000, int)
    y[:40] = 1
    p = np.round(1 / (1 + np.exp(-(2.5 * y - 4 + rng.normal(0, 1, len(y))))), 4)  # ties too
    (fpr, tpr), (recall, precision) = curve_points(y, p)
    assert len(fpr) <= 2 * 40 + 2 and len(recall) <= 2 * 40 + 2
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    ap = -np.sum(np.diff(recall) * precision[:-1])
    assert ap == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert recall[0] == 1 and recall[-1] == 0 and precision[-1] == 1
