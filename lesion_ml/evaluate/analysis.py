"""Beyond point metrics: patient-level bootstrap intervals, calibration, the operating threshold
and subgroup tables. Every function takes out-of-fold labels and scores; nothing here fits a
model on the rows it reports on.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from lesion_ml.evaluate.metrics import partial_auc

RANKING: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "roc_auc": lambda y, p: float(roc_auc_score(y, p)),
    "pauc_80": partial_auc,
    "pr_auc": lambda y, p: float(average_precision_score(y, p)),
}


def bootstrap_intervals(y: np.ndarray, p: np.ndarray, groups: np.ndarray, threshold: float, n_boot: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile intervals of ROC-AUC, pAUC, PR-AUC, sensitivity and specificity (at `threshold`),
    resampling whole patients (`groups`) with replacement, since lesions of one patient are not
    independent. Resamples with a single class are skipped for the ranking metrics."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    codes, uniques = pd.factorize(pd.Series(groups).astype(str))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    rows_of = [order[bounds[g]:bounds[g + 1]] for g in range(len(uniques))]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in (*RANKING, "sensitivity", "specificity")}
    for _ in range(n_boot):
        idx = np.concatenate([rows_of[g] for g in rng.integers(0, len(uniques), len(uniques))])
        yb, pb = y[idx], p[idx]
        pos, neg = yb == 1, yb == 0
        if pos.any() and neg.any():
            for name, fn in RANKING.items():
                draws[name].append(fn(yb, pb))
        if pos.any():
            draws["sensitivity"].append(float((pb[pos] >= threshold).mean()))
        if neg.any():
            draws["specificity"].append(float((pb[neg] < threshold).mean()))
    tail = (1 - level) / 2 * 100
    return {k: [round(float(np.percentile(v, tail)), 4), round(float(np.percentile(v, 100 - tail)), 4)]
            if v else [float("nan"), float("nan")] for k, v in draws.items()}


def calibration(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict:
    """Expected calibration error over `n_bins` equal-width bins and the reliability table
    (mean predicted probability, observed malignant fraction and count per non-empty bin)."""
    y, p = np.asarray(y, dtype=float), np.clip(np.asarray(p, dtype=float), 0, 1)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    table = []
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            conf, frac = float(p[m].mean()), float(y[m].mean())
            ece += m.mean() * abs(conf - frac)
            table.append({"bin": b, "mean_predicted": round(conf, 4), "fraction_malignant": round(frac, 4),
                          "n": int(m.sum())})
    return {"ece": round(float(ece), 4), "brier": round(float(np.mean((p - y) ** 2)), 4), "reliability": table}


def choose_threshold(y: np.ndarray, p: np.ndarray, method: str = "sensitivity", target: float = 0.95) -> float:
    """The operating threshold: "sensitivity" gives the highest threshold whose sensitivity is at
    least `target` (the fewest false alarms that still catch that share of cancers); "youden"
    maximises sensitivity + specificity - 1."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    if y.min() == y.max():
        raise ValueError("choosing a threshold needs both classes in the out-of-fold rows")
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    thr = np.minimum(thr, 1.0)  # sklearn puts +inf first
    if method == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    if method != "sensitivity":
        raise ValueError(f"unknown threshold method {method!r}; allowed: sensitivity, youden")
    ok = np.flatnonzero(tpr >= target)
    return float(thr[ok[0]])


AGE_BANDS = [0, 30, 50, 70, 200]
AGE_LABELS = ["<30", "30-49", "50-69", "70+"]


def subgroup_table(table: pd.DataFrame, p: np.ndarray, threshold: float, min_rows: int = 10) -> list[dict]:
    """Per subgroup of sex, age band, anatomic site and source (those columns the data has):
    rows, malignant, ROC-AUC (when both classes), sensitivity and specificity at `threshold`.
    Groups with fewer than `min_rows` rows are pooled as "other"; a pool still that small is left
    out, so no tiny cell is reported."""
    df = table.assign(_p=np.asarray(p, dtype=float))
    if "age_approx" in df:
        age = pd.to_numeric(df["age_approx"], errors="coerce")
        df["age_band"] = pd.cut(age, AGE_BANDS, right=False, labels=AGE_LABELS).astype("string")
    out = []
    for col in ("sex", "age_band", "anatom_site_general", "source"):
        if col not in df or df[col].nunique(dropna=True) < 1:
            continue
        values = df[col].astype("string").fillna("missing")
        counts = values.value_counts()
        values = values.where(values.map(counts) >= min_rows, "other")
        for value, g in df.groupby(values, sort=True):
            if len(g) < min_rows:  # even pooled, too small to show
                continue
            y, s = g["target"].to_numpy().astype(int), g["_p"].to_numpy()
            both = 0 < y.sum() < len(y)
            out.append({"attribute": col, "group": str(value), "n": int(len(g)), "n_malignant": int(y.sum()),
                        "roc_auc": round(float(roc_auc_score(y, s)), 4) if both else None,
                        "sensitivity": round(float((s[y == 1] >= threshold).mean()), 4) if y.sum() else None,
                        "specificity": round(float((s[y == 0] < threshold).mean()), 4) if (y == 0).any() else None})
    return out
