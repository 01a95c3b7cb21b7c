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
