"""Task of the evaluate stage."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lesion_ml.config import EvaluateConfig, TrainGbdtConfig
from lesion_ml.evaluate.analysis import bootstrap_intervals, calibration, choose_threshold, subgroup_table
from lesion_ml.evaluate.ensemble import cross_fit_calibration, mean_ensemble, rank_ensemble, stack_oof
from lesion_ml.evaluate.metrics import classification_metrics, curve_points
from lesion_ml.evaluate.report import build_report
from lesion_ml.io import write_csv, write_json, write_parquet, write_text
from tasks.cache import cached_task

log = logging.getLogger("lesion_ml.evaluate")


def _load_oof(oof_files: dict[str, Path]) -> pd.DataFrame:
    """One row per image: image_id, fold, target and a score column per model."""
    merged = None
    for name, path in sorted(oof_files.items()):
        oof = pd.read_parquet(path).sort_values("image_id").reset_index(drop=True)
        if merged is None:
            merged = oof[["image_id", "fold", "target"]].copy()
        elif not merged["image_id"].equals(oof["image_id"]):
            raise ValueError(f"{path}: its rows differ from the other models'; every model must be "
                             "evaluated on the same out-of-fold rows (rerun the train stages)")
        merged[name] = oof["pred"].to_numpy()
    return merged


def _threshold(y: np.ndarray, p: np.ndarray, cfg: EvaluateConfig) -> float:
    if cfg.threshold_method == "fixed":
        return cfg.threshold
    return choose_threshold(y, p, cfg.threshold_method, cfg.target_sensitivity)


@cached_task(outputs=('out_metrics', 'out_detail', 'out_html', 'out_scores', 'out_curves'))
def evaluate_models(oof_files: dict[str, Path], cfg: EvaluateConfig, lesions: Path, features_dir: Path,
                    gbdt_cfg: TrainGbdtConfig, gbdt_dir: Path, out_metrics: Path, out_detail: Path,
                    out_html: Path, out_scores: Path | None = None, out_curves: Path | None = None) -> dict:
    """Every model, plus ensembles and a stack, scored the same way on the same out-of-fold rows.

    Writes `out_metrics` (DVC metrics: point metrics at each model's threshold, 95% intervals,
    calibration error, per-fold ROC-AUC), `out_detail` (reliability tables and subgroups), the
    self-contained `out_html` report, `out_scores` (every model's OOF scores as evaluated, and
    before calibration as `<name>__raw`: the final stage fits its calibrator on them) and
    `out_curves`/{roc,pr}/<model>.csv (DVC plots). Returns ROC-AUC / pAUC per model.
    """
    oof = _load_oof(oof_files)
    y, fold = oof["target"].to_numpy().astype(int), oof["fold"].to_numpy()
    scores = oof.drop(columns=["image_id", "fold", "target"])
    base = list(scores.columns)
    cnn = [c for c in base if c.startswith("cnn_")]
    if cfg.ensembles and len(base) > 1:
        scores["ensemble_mean"] = mean_ensemble(scores[base])
        scores["ensemble_rank"] = rank_ensemble(scores[base])
    if cfg.stack and cnn:
        def features_of(k: int) -> pd.DataFrame:
            f = pd.read_parquet(features_dir / f"fold{k}.parquet").set_index("image_id")
            return f.loc[oof["image_id"]]

        scores["stack_gbdt_images"] = stack_oof(features_of, scores[cnn], fold, y, gbdt_cfg)
    raw = scores.add_suffix("__raw")
    if cfg.calibrate != "none":
        for c in scores.columns:
            if c != "ensemble_rank":
                scores[c] = cross_fit_calibration(y, scores[c].to_numpy(), fold, cfg.calibrate)
    table = pd.read_parquet(lesions).set_index("image_id").loc[oof["image_id"]].reset_index()
    groups = table["patient_id"].astype(str).to_numpy()

    models, detail = {}, {}
    for name in scores.columns:
        p = scores[name].to_numpy()
        thr = _threshold(y, p, cfg)
        m = classification_metrics(y, p, thr)
        m["fold_roc_auc"] = {str(k): classification_metrics(y[fold == k], p[fold == k], thr)["roc_auc"]
                             for k in np.unique(fold)}
        m["ci95"] = bootstrap_intervals(y, p, groups, thr, cfg.bootstrap, cfg.seed) if cfg.bootstrap else {}
        cal = calibration(y, p, cfg.calibration_bins) if name != "ensemble_rank" else \
            {"ece": None, "brier": None, "reliability": []}  # ranks are not probabilities
        m["calibration"] = {"ece": cal["ece"], "brier": cal["brier"]}
        m["threshold_method"] = cfg.threshold_method
        models[name] = m
        detail[name] = {"reliability": cal["reliability"], "subgroups": subgroup_table(table, p, thr)}
        log.info("%s: ROC-AUC %.4f, pAUC %.4f, threshold %.4g", name, m["roc_auc"], m["pauc_80"], thr)

    best = max(models, key=lambda n: models[n][cfg.select_metric])
    write_json({"best_model": best, "select_metric": cfg.select_metric, "models": models}, out_metrics)
    if out_scores is not None:
        write_parquet(pd.concat([oof[["image_id", "fold", "target"]], scores, raw], axis=1), out_scores)
    if out_curves is not None:
        _write_curves(y, scores, out_curves)
    write_json(detail, out_detail)
    importance: dict[str, float] = {}
    files = sorted(gbdt_dir.glob("importance_fold*.json"))
    for f in files:
        for k, v in json.loads(f.read_text()).items():
            importance[k] = importance.get(k, 0.0) + v / len(files)
    rule = (f"highest threshold with out-of-fold sensitivity >= {cfg.target_sensitivity}"
            if cfg.threshold_method == "sensitivity" else
            "Youden's J" if cfg.threshold_method == "youden" else f"fixed at {cfg.threshold}")
    meta = {"n": len(y), "n_malignant": int(y.sum()), "n_patients": int(len(set(groups))),
            "n_folds": int(len(np.unique(fold))), "n_boot": cfg.bootstrap, "threshold_rule": rule}
    for_report = {n: {**models[n], "calibration": {**models[n]["calibration"],
                                                   "reliability": detail[n]["reliability"]}} for n in models}
    write_text(build_report(y, {n: scores[n].to_numpy() for n in scores.columns}, for_report,
                            {n: d["subgroups"] for n, d in detail.items()}, importance, meta), out_html)
    _publish(models, best, out_html)
    return {name: {"roc_auc": m["roc_auc"], "pauc_80": m["pauc_80"]} for name, m in models.items()}


def _write_curves(y: np.ndarray, scores: pd.DataFrame, out: Path) -> None:
    """ROC and precision-recall points of every model, one CSV each (DVC plots)."""
    for name in scores.columns:
        (fpr, tpr), (recall, precision) = curve_points(y, scores[name].to_numpy())
        write_csv(pd.DataFrame({"fpr": fpr.round(5), "tpr": tpr.round(5)}), out / "roc" / f"{name}.csv")
        write_csv(pd.DataFrame({"recall": recall.round(5), "precision": precision.round(5)}),
                  out / "pr" / f"{name}.csv")


def _publish(models: dict, best: str, report: Path) -> None:
    """The comparison as a markdown artefact of the flow run (shown in the Prefect UI)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import get_run_context

    try:
        get_run_context()
    except Exception:  # noqa: BLE001 - called outside a run (tests of the function body): nothing to attach to
        return
    rows = ["| model | ROC-AUC | 95% CI | pAUC80 | sensitivity | specificity | threshold |",
            "|---|---|---|---|---|---|---|"]
    for n, m in sorted(models.items(), key=lambda kv: -kv[1]["roc_auc"]):
        ci = m["ci95"].get("roc_auc", [float("nan")] * 2)
        rows.append(f"| {n} | {m['roc_auc']:.4f} | {ci[0]:.3f}-{ci[1]:.3f} | {m['pauc_80']:.4f} | {m['recall']:.3f} | "
                    f"{m['specificity']:.3f} | {m['threshold']:.4g} |")
    text = f"Best: **{best}**. Report: `{report}`\n\n" + "\n".join(rows)
    create_markdown_artifact(key="model-comparison", markdown=text, description="out-of-fold comparison of every model")
