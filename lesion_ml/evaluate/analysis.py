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


def bootstrap_intervals(y: np.ndarray, p: np.ndarray, groups: np.ndarray, threshold: float | np.ndarray,
                        n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                        decide: np.ndarray | None = None) -> dict[str, list[float]]:
    """Percentile intervals of ROC-AUC, pAUC, PR-AUC, sensitivity and specificity (at `threshold`),
    resampling whole patients (`groups`) with replacement, since lesions of one patient are not
    independent. Resamples with a single class are skipped for the ranking metrics.

    A row counts as flagged when `decide >= threshold` (`decide` defaults to `p`; `threshold` may
    hold one value per row), as in `classification_metrics`.

    A resample is a count per patient (how often it was drawn), so every metric is a weighted sum
    over patients: the ROC curve of a resample only has corners at the scores of malignant rows,
    and each corner's false-positive count is (counts) @ (negatives per patient at or above that
    score). All resamples are scored with a few matrix products instead of re-sorting every row
    each time, which keeps 1,000 resamples of 401,059 rows within seconds. The figures are those
    of scikit-learn's roc_auc_score, partial_auc and average_precision_score on the resampled rows.
    """
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    codes, uniques = pd.factorize(pd.Series(groups).astype(str))
    n_groups = len(uniques)
    curve = _PatientCurves(y, p, codes, n_groups, np.asarray(p if decide is None else decide, float) >= threshold)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {k: [] for k in (*RANKING, "sensitivity", "specificity")}
    for counts in _resample_counts(rng, n_groups, n_boot):
        for name, values in curve.metrics(counts).items():
            draws[name].append(values[np.isfinite(values)])
    return {k: _percentiles(parts, level) for k, parts in draws.items()}


def paired_bootstrap(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, groups: np.ndarray, n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95) -> dict[str, dict[str, float | list[float]]]:
    """How much model b's ranking metrics exceed model a's on the same rows: the point difference,
    its percentile interval over patient-level resamples (both models scored on the same resample)
    and the share of resamples in which b is better. An interval that spans 0 means the data do not
    tell the two apart."""
    y = np.asarray(y).astype(int)
    codes, uniques = pd.factorize(pd.Series(groups).astype(str))
    n_groups = len(uniques)
    curves = [_PatientCurves(y, np.asarray(p, dtype=float), codes, n_groups, np.asarray(p, float) >= 0.5)
              for p in (p_a, p_b)]
    draws: dict[str, list[np.ndarray]] = {k: [] for k in RANKING}
    for counts in _resample_counts(np.random.default_rng(seed), n_groups, n_boot):
        a, b = (c.metrics(counts) for c in curves)
        for k in RANKING:
            d = b[k] - a[k]
            draws[k].append(d[np.isfinite(d)])
    out = {}
    for k, fn in RANKING.items():
        v = np.concatenate(draws[k]) if draws[k] else np.zeros(0)
        out[k] = {"difference": round(fn(y, np.asarray(p_b, float)) - fn(y, np.asarray(p_a, float)), 4),
                  "ci95": _percentiles(draws[k], level),
                  "share_better": round(float((v > 0).mean()), 4) if v.size else float("nan")}
    return out


def _resample_counts(rng: np.random.Generator, n_groups: int, n_boot: int):
    """Patient-level resamples as draw counts per patient, in blocks of 100 (bounded memory)."""
    for start in range(0, n_boot, 100):
        yield np.stack([np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
                        for _ in range(min(100, n_boot - start))]).astype(float)


def _percentiles(parts: list[np.ndarray], level: float) -> list[float]:
    v = np.concatenate(parts) if parts else np.zeros(0)  # n_boot 0: no interval
    tail = (1 - level) / 2 * 100
    return ([round(float(np.percentile(v, tail)), 4), round(float(np.percentile(v, 100 - tail)), 4)]
            if v.size else [float("nan"), float("nan")])


class _PatientCurves:
    """Per-patient tallies from which the ROC and precision-recall curves of any patient-level
    resample follow: for each distinct score of a malignant row (a "corner", best first), the
    benign rows of every patient scored above it and at it, and each patient's malignant rows at
    each corner."""

    def __init__(self, y: np.ndarray, p: np.ndarray, codes: np.ndarray, n_groups: int, flagged: np.ndarray):
        pos, neg = y == 1, y == 0
        corners, pos_corner = np.unique(-p[pos], return_inverse=True)  # descending scores
        self.corner_score = -corners
        self.pos_at = np.zeros((n_groups, len(corners)))  # malignant rows of patient b at corner k
        np.add.at(self.pos_at, (codes[pos], pos_corner), 1.0)
        self.neg_above = np.zeros((n_groups, len(corners)))  # benign rows of b scored above corner k
        self.neg_at = np.zeros((n_groups, len(corners)))  # ... and exactly at it
        neg_codes, neg_scores = codes[neg], p[neg]
        order = np.lexsort((neg_scores, neg_codes))
        neg_codes, neg_scores = neg_codes[order], neg_scores[order]
        bounds = np.searchsorted(neg_codes, np.arange(n_groups + 1))
        for b in range(n_groups):
            s = neg_scores[bounds[b]:bounds[b + 1]]
            if s.size:
                below_or_at = np.searchsorted(s, self.corner_score, "right")
                below = np.searchsorted(s, self.corner_score, "left")
                self.neg_above[b] = s.size - below_or_at
                self.neg_at[b] = below_or_at - below
        self.neg_total = np.bincount(neg_codes, minlength=n_groups).astype(float)
        self.neg_flagged = np.bincount(codes[neg & flagged], minlength=n_groups).astype(float)
        self.pos_flagged = np.bincount(codes[pos & flagged], minlength=n_groups).astype(float)

    def metrics(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric for each row of `counts` (resamples x patients); NaN where undefined."""
        tp_step = counts @ self.pos_at  # resampled malignant rows at each corner
        tp_ge = np.cumsum(tp_step, axis=1)
        tp_gt = tp_ge - tp_step
        fp_gt = counts @ self.neg_above
        fp_ge = fp_gt + counts @ self.neg_at
        n_pos, n_neg = tp_ge[:, -1], counts @ self.neg_total
        with np.errstate(divide="ignore", invalid="ignore"):
            both = (n_pos > 0) & (n_neg > 0)
            # ROC-AUC: each malignant row beats the benign rows below it, and half of those tied with it
            wins = tp_step * ((n_neg[:, None] - fp_ge) + 0.5 * (fp_ge - fp_gt))
            roc = wins.sum(1) / (n_pos * n_neg)
            # the ROC polyline: (0,0), then per corner a diagonal from (fp_gt, tp_gt) to (fp_ge, tp_ge)
            # preceded by a horizontal run, and a last run to (1, 1); pAUC is its area above TPR 0.8
            x = np.concatenate([fp_gt, fp_ge], axis=1).reshape(len(counts), 2, -1).transpose(0, 2, 1)
            x = np.concatenate([np.zeros((len(counts), 1)), x.reshape(len(counts), -1), n_neg[:, None]], 1)
            t = np.concatenate([tp_gt, tp_ge], axis=1).reshape(len(counts), 2, -1).transpose(0, 2, 1)
            t = np.concatenate([np.zeros((len(counts), 1)), t.reshape(len(counts), -1), n_pos[:, None]], 1)
            pauc = _area_above(x / n_neg[:, None], t / n_pos[:, None], 0.8)
            # average precision: recall steps at each corner times the precision there
            precision = np.where(tp_ge + fp_ge > 0, tp_ge / (tp_ge + fp_ge), 0.0)
            ap = (tp_step * precision).sum(1) / n_pos
            sens = (counts @ self.pos_flagged) / n_pos
            spec = 1 - (counts @ self.neg_flagged) / n_neg
        nan = np.full(len(counts), np.nan)
        return {"roc_auc": np.where(both, roc, nan), "pauc_80": np.where(both, pauc, nan),
                "pr_auc": np.where(both, ap, nan), "sensitivity": np.where(n_pos > 0, sens, nan),
                "specificity": np.where(n_neg > 0, spec, nan)}


def _area_above(x: np.ndarray, t: np.ndarray, level: float) -> np.ndarray:
    """Row-wise area between each polyline (x, t), x increasing, and the line t = level, where
    the polyline lies above it (linear interpolation at the crossing, as scikit-learn's partial
    AUC interpolates at its max_fpr)."""
    x0, x1, t0, t1 = x[:, :-1], x[:, 1:], t[:, :-1] - level, t[:, 1:] - level
    dx = x1 - x0
    both = (t0 >= 0) & (t1 >= 0)
    full = dx * (t0 + t1) / 2
    rise = t1 - t0
    part = np.where(rise != 0, dx * np.maximum(t1, 0) ** 2 / np.where(rise != 0, rise, 1) / 2, 0.0)
    return np.where(both, full, np.where((t0 < 0) & (t1 > 0), part, 0.0)).sum(1)


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


def subgroup_table(table: pd.DataFrame, p: np.ndarray, threshold: float | np.ndarray, min_rows: int = 10,
                   decide: np.ndarray | None = None) -> list[dict]:
    """Per subgroup of sex, age band, anatomic site and source (those columns the data has):
    rows, malignant, ROC-AUC (when both classes), sensitivity and specificity at `threshold`
    (flagged: `decide >= threshold`, as in `classification_metrics`).
    Groups with fewer than `min_rows` rows are pooled as "other"; a pool still that small is left
    out, so no tiny cell is reported."""
    flagged = np.asarray(p if decide is None else decide, dtype=float) >= threshold
    df = table.assign(_p=np.asarray(p, dtype=float), _flag=flagged)
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
            y, s, flag = g["target"].to_numpy().astype(int), g["_p"].to_numpy(), g["_flag"].to_numpy()
            both = 0 < y.sum() < len(y)
            out.append({"attribute": col, "group": str(value), "n": int(len(g)), "n_malignant": int(y.sum()),
                        "roc_auc": round(float(roc_auc_score(y, s)), 4) if both else None,
                        "sensitivity": round(float(flag[y == 1].mean()), 4) if y.sum() else None,
                        "specificity": round(float((~flag[y == 0]).mean()), 4) if (y == 0).any() else None})
    return out
