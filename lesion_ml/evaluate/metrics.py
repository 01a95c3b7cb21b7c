"""The metric contract: one function, the same for every model and fold."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score,
                             confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score)


def partial_auc(y: np.ndarray, p: np.ndarray, min_tpr: float = 0.80) -> float:
    """ISIC 2024's partial ROC-AUC above `min_tpr` true-positive rate (range 0 .. 1-min_tpr).

    Computed as in the challenge: labels and scores are flipped so that the region above
    `min_tpr` TPR becomes the region below `max_fpr = 1 - min_tpr`, scikit-learn's McClish-
    standardised partial AUC is taken there, and the standardisation is undone.
    """
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    max_fpr = 1 - min_tpr
    s = roc_auc_score(1 - y, 1 - p, max_fpr=max_fpr)
    return float(0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / (1.0 - 0.5) * (s - 0.5))


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float | np.ndarray = 0.5,
                           decide: np.ndarray | None = None) -> dict[str, float | list]:
    """Threshold-free and thresholded metrics for binary labels `y` and scores `p` in [0, 1].

    Returns a JSON-ready dict: roc_auc, pauc_80 (ISIC 2024), pr_auc, and at `threshold`:
    accuracy, balanced_accuracy, precision, recall (sensitivity), specificity, f1 and the
    confusion matrix [[tn, fp], [fn, tp]]. Ranking metrics are NaN when `y` has one class.

    The decision is `decide >= threshold` (`decide` defaults to `p`): a model exported with a
    calibrator decides on the exported calibrator's probabilities, while its ranking metrics come
    from the cross-fitted ones. `threshold` may hold one value per row (each row's own model's
    threshold); the returned "threshold" is then None.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    pred = (np.asarray(p if decide is None else decide, dtype=float) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y)) == 2
    return {
        "n": int(len(y)),
        "n_positive": int(y.sum()),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pauc_80": partial_auc(y, p) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "threshold": float(threshold) if np.ndim(threshold) == 0 else None,
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if both else float("nan"),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if (tn + fp) else float("nan"),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def curve_points(y: np.ndarray, p: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The ROC curve (fpr, tpr) and the precision-recall curve (recall, precision), thinned to
    their corners: at most about two points per malignant image whatever the number of benign
    ones, so that plots and DVC plot files stay small at 401,059 rows. Inside a stretch where
    one coordinate stays the same only its two ends are kept, which leaves the ROC-AUC (trapezoids)
    and the average precision (recall steps times precision) of the points unchanged."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    keep = ~(_inside_run(fpr) | _inside_run(tpr))
    precision, recall, _ = precision_recall_curve(y, p)
    keep_pr = ~_inside_run(recall)
    return (fpr[keep], tpr[keep]), (recall[keep_pr], precision[keep_pr])


def _inside_run(v: np.ndarray) -> np.ndarray:
    """True where a value equals both neighbours (the two ends of the array are never inside)."""
    same = v[1:] == v[:-1]
    return np.r_[False, same[:-1] & same[1:], False] if len(v) > 2 else np.zeros(len(v), bool)
