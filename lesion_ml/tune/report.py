"""What a tuning study found, and whether it helps (lesion_ml.tune.study runs the studies): each study's
best parameters, the out-of-fold scores of the tuned and the untuned params refitted on every outer
fold, their comparison with patient-level bootstrap intervals, the trials table and the parameter
importances.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lesion_ml.config import Params
from lesion_ml.evaluate.analysis import RANKING, bootstrap_intervals, paired_bootstrap

if TYPE_CHECKING:
    from lesion_ml.tune.study import CnnFitter, GbdtFitter, TuneData

log = logging.getLogger("lesion_ml.tune.study")  # the tuning log, as before these functions moved here


def best_values(opt_study) -> dict[str, Any]:
    """The best complete trial's parameters (params.yaml keys -> values); none (the untuned params)
    when no trial completed (every one pruned or failed), with a warning."""
    import optuna

    if not opt_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        log.warning("study %s has no complete trial; its untuned params stand in for the best", opt_study.study_name)
        return {}
    return dict(opt_study.best_trial.params)


def outer_scores(fitter: GbdtFitter | CnnFitter, base: Params,
                 values_per_fold: dict[int, dict[str, Any]]) -> np.ndarray:
    """Out-of-fold scores: each outer fold k predicted by a model fitted on its training rows with
    the parameters `values_per_fold[k]` (an empty dict: the untuned params); an image model of
    fold k trains with seed + k, as in the train_cnn stage."""
    from lesion_ml.tune.study import with_values  # at call time: lesion_ml.tune.study imports this module

    data = fitter.data
    oof = np.full(len(data.y), np.nan)
    for k, values in values_per_fold.items():
        valid = data.fold == k
        oof[valid] = fitter.fit_predict(with_values(base, values), ~valid, valid, k)
    return oof


def tuned_vs_default(studies: dict[int | None, Any], fitter: GbdtFitter | CnnFitter, base: Params,
                     n_boot: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray, dict[int, dict[str, Any]]]:
    """Each outer fold refitted with its own study's best parameters and with the untuned params
    (`studies`: outer fold -> Optuna study, None -> the exported one, skipped here). Returns the
    comparison (`compare`), the default and tuned out-of-fold scores, and each fold's best values."""
    per_fold = {k: best_values(s) for k, s in studies.items() if k is not None}
    default = outer_scores(fitter, base, {k: {} for k in per_fold})
    tuned = outer_scores(fitter, base, per_fold)
    return compare(fitter.data, default, tuned, n_boot), default, tuned, per_fold


def compare(data: TuneData, default: np.ndarray, tuned: np.ndarray, n_boot: int, seed: int = 0) -> dict[str, Any]:
    """Default vs tuned on the same out-of-fold rows: each model's ranking metrics with patient-level
    bootstrap intervals, and the paired difference (tuned - default) with its interval."""
    out: dict[str, Any] = {}
    for label, p in (("default", default), ("tuned", tuned)):
        ci = bootstrap_intervals(data.y, p, data.groups, 0.5, n_boot, seed) if n_boot else {}
        out[label] = {k: round(fn(data.y, p), 4) for k, fn in RANKING.items()}
        out[label]["ci95"] = {k: ci[k] for k in RANKING} if ci else {}
    out["difference"] = paired_bootstrap(data.y, default, tuned, data.groups, n_boot, seed) if n_boot else {}
    return out


def trials_table(opt_study) -> pd.DataFrame:
    """One row per trial: number, state, value, the parameters, duration in seconds."""
    rows = []
    for t in opt_study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, **t.params,
                     "seconds": seconds, "worker": t.user_attrs.get("worker")})
    return pd.DataFrame(rows)


def importances(opt_study) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA) over the complete trials; empty with fewer than two
    trials or a single parameter that never varied."""
    import optuna

    try:
        return {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(opt_study).items()}
    except (RuntimeError, ValueError):
        return {}
