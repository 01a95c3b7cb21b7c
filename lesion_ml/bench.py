"""Benchmarks that print figures: the tabular pipeline at ISIC 2024 scale.

Times each step of prepare + select + 5-fold LightGBM on generated metadata with the real
file's shape (401,059 rows, 1,042 patients, 393 malignant, 55 columns), reports the process's
peak resident memory and the out-of-fold ROC-AUC / partial AUC.
"""
from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np


from lesion_ml.config import PrepareConfig, SplitConfig, TrainGbdtConfig
from lesion_ml.data.synthetic_tabular import generate_metadata
from lesion_ml.evaluate.metrics import partial_auc
from lesion_ml.models.gbdt import fit_gbdt, predict_gbdt
from lesion_ml.split import assign_folds
from lesion_ml.tabular.prepare import clean_metadata, fit_transform_fold


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(steps: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    steps[name] = round(steps.get(name, 0.0) + time.perf_counter() - start, 2)
    return out


def bench_tabular(n_rows: int = 401_059, n_patients: int = 1_042, malignant: int = 393, seed: int = 0,
                  prepare: PrepareConfig | None = None, gbdt: TrainGbdtConfig | None = None,
                  split: SplitConfig | None = None) -> dict[str, Any]:
    """Run and time the metadata track once.

    Returns:
        A dict with the sizes, `seconds` per step (generate, clean_engineer, split,
        fit_transform_folds = impute + clip + encode + select over all folds, gbdt_folds),
        `prepare_select_s` (clean_engineer + fit_transform_folds), `peak_rss_mib`,
        `n_features_in` / `n_candidates` / `n_selected`, and OOF `roc_auc` and `pauc_80`.
    """
    prepare, gbdt, split = prepare or PrepareConfig(), gbdt or TrainGbdtConfig(), split or SplitConfig()
    steps: dict[str, float] = {}
    meta = _timed(steps, "generate", lambda: generate_metadata(n_rows, n_patients, malignant / n_rows, seed))
    table = meta.rename(columns={"isic_id": "image_id"}).assign(source="bench")
    features = _timed(steps, "clean_engineer", lambda: clean_metadata(table, prepare.features))
    folds = _timed(steps, "split", lambda: assign_folds(table, split))
    y = table["target"].to_numpy()
    oof = np.zeros(len(table))
    names: list[str] = []
    for k in range(split.n_folds):
        train = (folds["fold"] != k).to_numpy()
        X, names, _ = _timed(steps, "fit_transform_folds",  # noqa: N806
                             lambda: fit_transform_fold(features, table["target"], train, prepare))
        model = _timed(steps, "gbdt_folds", lambda: fit_gbdt(X[train], y[train], gbdt))
        oof[~train] = _timed(steps, "gbdt_folds", lambda: predict_gbdt(model, X[~train]))
    from sklearn.metrics import roc_auc_score

    return {
        "rows": int(len(table)), "patients": int(table["patient_id"].nunique()), "malignant": int(y.sum()),
        "n_features_in": int(meta.shape[1]), "n_candidates": int(features.shape[1]), "n_selected": len(names),
        "seconds": steps,
        "prepare_select_s": round(steps["clean_engineer"] + steps["fit_transform_folds"], 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "roc_auc": round(float(roc_auc_score(y, oof)), 4), "pauc_80": round(partial_auc(y, oof), 4),
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text report of `bench_tabular`'s result."""
    lines = [f"tabular bench: {result['rows']:,} rows, {result['patients']:,} patients, "
             f"{result['malignant']} malignant, {result['n_features_in']} columns -> "
             f"{result['n_candidates']} candidates -> {result['n_selected']} selected"]
    lines += [f"  {name:<22}{secs:>9.2f} s" for name, secs in result["seconds"].items()]
    lines += [f"  {'prepare + select':<22}{result['prepare_select_s']:>9.2f} s",
              f"  {'peak RSS':<22}{result['peak_rss_mib'] / 1024:>9.2f} GiB",
              f"  {'OOF ROC-AUC':<22}{result['roc_auc']:>9.4f}",
              f"  {'OOF pAUC (TPR>0.8)':<22}{result['pauc_80']:>9.4f}"]
    return "\n".join(lines)


__all__ = ["bench_tabular", "format_table", "peak_rss_mib"]
