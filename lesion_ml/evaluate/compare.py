"""Every model scored the same way on the same out-of-fold rows: the evaluate stage's library half.

`compare_models` takes the base models' out-of-fold scores, adds the ensembles and the stack of
the catalogue, calibrates (cross-fitted) when asked, and scores each model at its own threshold
with patient-bootstrap intervals, calibration, per-fold ROC-AUC and subgroups.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lesion_ml.catalogue import ModelRef, derived_models
from lesion_ml.config import EvaluateConfig, TrainGbdtConfig
from lesion_ml.evaluate.analysis import (bootstrap_intervals, calibration, choose_threshold, paired_bootstrap,
                                         subgroup_table)
from lesion_ml.evaluate.combine import Calibrator, combiner, cross_fit, cross_fit_calibration
from lesion_ml.evaluate.metrics import classification_metrics, curve_points
from lesion_ml.evaluate.report import build_report

log = logging.getLogger(__name__)

ROWS = ["image_id", "fold", "target"]


@dataclass
class Comparison:
    """What evaluate writes: `metrics` (reports/metrics.json), `detail` (reliability tables and
    subgroups), `scores` (the rows, every model's evaluated score and its raw score before
    calibration: the final stage fits its calibrator on those) and the HTML `report`."""

    metrics: dict
    detail: dict
    scores: pd.DataFrame
    report: str
    models: list[ModelRef]


def threshold_rule(cfg: EvaluateConfig) -> str:
    """How each model's operating threshold is chosen, in words (report and model card)."""
    if cfg.threshold_method == "sensitivity":
        return f"the highest threshold with out-of-fold sensitivity >= {cfg.target_sensitivity}"
    return "Youden's J on the out-of-fold scores" if cfg.threshold_method == "youden" else f"fixed at {cfg.threshold}"


def merge_oof(frames: dict[str, pd.DataFrame], where: dict[str, Path | str] | None = None) -> pd.DataFrame:
    """One row per image (image_id, fold, target) and a score column per model, from each
    model's out-of-fold table (image_id, fold, target, pred).

    Raises:
        ValueError: the models were not evaluated on the same rows (naming the file).
    """
    merged = None
    for name, frame in sorted(frames.items()):
        oof = frame.sort_values("image_id").reset_index(drop=True)
        if merged is None:
            merged = oof[ROWS].copy()
        elif not merged["image_id"].equals(oof["image_id"]):
            raise ValueError(f"{(where or {}).get(name, name)}: its rows differ from the other models'; every model "
                             "must be evaluated on the same out-of-fold rows (rerun the train stages)")
        merged[name] = oof["pred"].to_numpy()
    return merged


def _threshold(y: np.ndarray, p: np.ndarray, cfg: EvaluateConfig) -> float:
    if cfg.threshold_method == "fixed":
        return cfg.threshold
    return choose_threshold(y, p, cfg.threshold_method, cfg.target_sensitivity)


def calibration_method(ref: ModelRef, cfg: EvaluateConfig) -> str:
    """The calibration of `ref`'s scores: `cfg.calibrate`, except for the rank ensemble (ranks are
    not probabilities)."""
    return cfg.calibrate if ref.is_probability else "none"


def model_scores(oof: pd.DataFrame, base: list[ModelRef], cfg: EvaluateConfig, gbdt_cfg: TrainGbdtConfig,
                 features_of: Callable[[int], pd.DataFrame]
                 ) -> tuple[list[ModelRef], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(every model, their evaluated scores, their raw scores, their decision scores).

    The base models' out-of-fold scores plus the catalogue's ensembles and stack (the estimators
    of lesion_ml.evaluate.combine, the ones the exported model uses; the stack cross-fitted by
    fold). With `cfg.calibrate`, the evaluated scores are calibrated cross-fitted by fold (for the
    ranking and calibration figures), and the decision scores are the raw scores through the
    calibrator fitted on every out-of-fold row: exactly what the exported model's threshold is
    applied to, so the threshold chosen on them keeps its sensitivity there. Without calibration
    all three are the same. The base models go in name order (the order of their score columns
    and of the stack's inputs)."""
    y, fold = oof["target"].to_numpy().astype(int), oof["fold"].to_numpy()
    base = sorted(base, key=lambda r: r.name)
    scores = oof[[r.name for r in base]].copy()
    models = base + derived_models(base, cfg)
    for ref in models[len(base):]:
        parts = scores[list(ref.components)]
        if ref.combine == "stack":
            scores[ref.name] = cross_fit(lambda r=ref: combiner("stack", r.components, gbdt_cfg), parts, y, fold,
                                         features_of)
        else:
            scores[ref.name] = combiner(ref.combine, ref.components).fit(parts).predict(parts)
    raw = pd.DataFrame({r.raw: scores[r.name] for r in models})
    decided = scores.copy()
    for ref in models:
        method = calibration_method(ref, cfg)
        if method != "none":
            p = scores[ref.name].to_numpy()
            scores[ref.name] = cross_fit_calibration(y, p, fold, method)
            decided[ref.name] = Calibrator(method).fit(y, p).predict(p)
    return models, scores, raw, decided


def score_model(ref: ModelRef, p: np.ndarray, y: np.ndarray, fold: np.ndarray, table: pd.DataFrame,
                cfg: EvaluateConfig, decide: np.ndarray | None = None) -> tuple[dict, dict]:
    """(metrics at its threshold with intervals, calibration and per-fold ROC-AUC; its
    reliability table and subgroups) of one model's out-of-fold scores `p`. The threshold is
    chosen on, and applied to, `decide` (default `p`: see `model_scores`)."""
    groups = table["patient_id"].astype(str).to_numpy()
    decide = p if decide is None else decide
    thr = _threshold(y, decide, cfg)
    m = classification_metrics(y, p, thr, decide=decide)
    m["fold_roc_auc"] = {str(k): classification_metrics(y[fold == k], p[fold == k], thr)["roc_auc"]
                         for k in np.unique(fold)}
    m["ci95"] = bootstrap_intervals(y, p, groups, thr, cfg.bootstrap, cfg.seed, decide=decide) \
        if cfg.bootstrap else {}
    cal = calibration(y, p, cfg.calibration_bins) if ref.is_probability else \
        {"ece": None, "brier": None, "reliability": []}
    m["calibration"] = {"ece": cal["ece"], "brier": cal["brier"]}
    m["threshold_method"] = cfg.threshold_method
    return m, {"reliability": cal["reliability"], "subgroups": subgroup_table(table, p, thr, decide=decide)}


def complexity(ref: ModelRef) -> tuple[int, int]:
    """How simple a model is, simplest first: fewer components (a stack counts its metadata model as
    one more), then image-only before the metadata model before fusion before an ensemble before a
    stack."""
    order = {"gbdt": 1, "ensemble": 3, "stack": 4}.get(ref.kind, 2 if ref.needs_metadata else 0)
    return len(ref.components) + (ref.kind == "stack"), order


def select_model(models: list[ModelRef], metrics: dict[str, dict], scores: pd.DataFrame, y: np.ndarray,
                 groups: np.ndarray, cfg: EvaluateConfig) -> dict:
    """The model that evaluate names best, and why.

    The leader has the highest `cfg.select_metric` (a model where it is undefined is never
    chosen; equal values go to the simpler model, then by name). The runner-up is compared with it
    on the same patient-level resamples (`paired_bootstrap`, `cfg.bootstrap` resamples): when the
    95% interval of the leader's advantage reaches 0, the data do not tell the two apart, and the
    simpler of the two (`complexity`) is chosen.

    Returns:
        {"chosen", "leader", "runner_up", "metric", "rule", "margin": {difference, ci95,
        share_better}}: the leader's advantage over the runner-up, as metrics.json records it.
    """
    metric = cfg.select_metric
    finite = [r for r in models if np.isfinite(_value(metrics[r.name][metric]))]
    if not finite:
        raise ValueError(f"{metric} is undefined for every model (one class in the out-of-fold rows?); "
                         "nothing can be chosen (params.yaml evaluate.select_metric)")
    ranked = sorted(finite, key=lambda r: (-metrics[r.name][metric], complexity(r), r.name))
    leader, runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    out = {"chosen": leader.name, "leader": leader.name, "runner_up": runner_up.name if runner_up else None,
           "metric": metric, "margin": None,
           "rule": f"highest out-of-fold {metric}; the runner-up instead when it is simpler (fewer components; "
                   "image-only, metadata, fusion, ensemble, stack) and the leader's advantage over it has a 95% "
                   f"patient-bootstrap interval ({cfg.bootstrap} paired resamples) that reaches 0"}
    if runner_up is None or not cfg.bootstrap:
        return out
    margin = paired_bootstrap(y, scores[runner_up.name].to_numpy(), scores[leader.name].to_numpy(), groups,
                              cfg.bootstrap, cfg.seed)[metric]
    out["margin"] = margin
    if not margin["ci95"][0] > 0 and complexity(runner_up) < complexity(leader):  # within the noise
        out["chosen"] = runner_up.name
    return out


def _value(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def compare_models(oof: pd.DataFrame, base: list[ModelRef], table: pd.DataFrame, *,
                   features_of: Callable[[int], pd.DataFrame], importance: dict[str, float], cfg: EvaluateConfig,
                   gbdt_cfg: TrainGbdtConfig) -> Comparison:
    """Score every model of the catalogue on the out-of-fold rows `oof` (see `merge_oof`).

    Args:
        base: the trained models, in the order their columns appear.
        table: the lesion table (patient_id, subgroup columns), any row order.
        features_of: fold k's metadata features, one row per image of `oof` (the stack's input).
        importance: the metadata model's mean feature importance, for the report.
    """
    y, fold = oof["target"].to_numpy().astype(int), oof["fold"].to_numpy()
    models, scores, raw, decided = model_scores(oof, base, cfg, gbdt_cfg, features_of)
    table = table.set_index("image_id").loc[oof["image_id"]].reset_index()
    metrics, detail = {}, {}
    for ref in models:
        metrics[ref.name], detail[ref.name] = score_model(ref, scores[ref.name].to_numpy(), y, fold, table, cfg,
                                                          decided[ref.name].to_numpy())
        m = metrics[ref.name]
        log.info("%s: ROC-AUC %.4f, pAUC %.4f, threshold %.4g", ref.name, m["roc_auc"], m["pauc_80"], m["threshold"])
    selection = select_model(models, metrics, scores, y, table["patient_id"].astype(str).to_numpy(), cfg)
    best = selection["chosen"]
    if best != selection["leader"]:
        log.info("chose %s over %s (highest %s): the difference is within the patient-bootstrap noise", best,
                 selection["leader"], cfg.select_metric)
    meta = {"n": len(y), "n_malignant": int(y.sum()), "n_patients": int(table["patient_id"].astype(str).nunique()),
            "n_folds": int(len(np.unique(fold))), "n_boot": cfg.bootstrap, "threshold_rule": threshold_rule(cfg)}
    for_report = {n: {**m, "calibration": {**m["calibration"], "reliability": detail[n]["reliability"]}}
                  for n, m in metrics.items()}
    report = build_report(y, {n: scores[n].to_numpy() for n in scores.columns}, for_report,
                          {n: d["subgroups"] for n, d in detail.items()}, importance, meta)
    return Comparison({"best_model": best, "select_metric": cfg.select_metric, "selection": selection,
                       "models": metrics}, detail,
                      pd.concat([oof[ROWS], scores, raw], axis=1), report, models)


def curve_tables(y: np.ndarray, scores: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Each model's ROC (fpr, tpr) and precision-recall (recall, precision) points (DVC plots)."""
    out = {}
    for name in scores.columns:
        (fpr, tpr), (recall, precision) = curve_points(y, scores[name].to_numpy())
        out[name] = (pd.DataFrame({"fpr": fpr.round(5), "tpr": tpr.round(5)}),
                     pd.DataFrame({"recall": recall.round(5), "precision": precision.round(5)}))
    return out



def _cell(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def metrics_markdown(metrics: dict) -> str:
    """reports/metrics.json as a markdown table, best ROC-AUC first (the Prefect artefacts)."""
    rows = ["| model | ROC-AUC | 95% CI | pAUC80 | PR-AUC | sensitivity | specificity | threshold |",
            "|---|---|---|---|---|---|---|---|"]
    for name, m in sorted(metrics["models"].items(), key=lambda kv: -(kv[1]["roc_auc"] or 0)):
        ci = m.get("ci95", {}).get("roc_auc")
        rows.append(f"| {name} | {_cell(m['roc_auc'])} | {f'{ci[0]:.3f}-{ci[1]:.3f}' if ci else 'n/a'} | "
                    f"{_cell(m['pauc_80'])} | {_cell(m['pr_auc'])} | {_cell(m['recall'], 3)} | "
                    f"{_cell(m['specificity'], 3)} | {m['threshold']:.4g} |")
    best = f"Best: **{metrics['best_model']}** (by {metrics.get('select_metric', 'roc_auc')})"
    return best + "\n\n" + "\n".join(rows)


def metrics_text(metrics: dict) -> str:
    """reports/metrics.json as a plain-text table, best ROC-AUC first (`lesion metrics`)."""
    lines = [f"{'model':<28}{'ROC-AUC':>9}{'pAUC80':>9}{'PR-AUC':>9}{'recall':>9}{'spec.':>9}   per-fold ROC-AUC"]
    for name, m in sorted(metrics["models"].items(), key=lambda kv: -(kv[1]["roc_auc"] or 0)):
        folds = " ".join(_cell(v, 3) for v in m["fold_roc_auc"].values())
        cells = "".join(f"{_cell(m[k]):>9}" for k in ("roc_auc", "pauc_80", "pr_auc", "recall", "specificity"))
        lines.append(f"{name:<28}{cells}   {folds}")
    return "\n".join(lines)

