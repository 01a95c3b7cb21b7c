"""What a tuning study found, and whether it helps (lesion_ml.tune.study runs the studies): each study's
best parameters, the out-of-fold scores of the tuned and the untuned params refitted on every outer
fold, their comparison with patient-level bootstrap intervals, the trials table, the parameter
importances, and all of it as one `StudyReport` (summary, override file text, HTML page) that the
tune stage's task writes.
"""
from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from lesion_ml.config import StudyConfig
from lesion_ml.config.tune import TuneBase
from lesion_ml.evaluate.analysis import RANKING, bootstrap_intervals, paired_bootstrap
from lesion_ml.evaluate.report import embed_png, html_table, importance_chart, page_head, plt, with_interval
from lesion_ml.tune.data import TuneData
from lesion_ml.tune.fit import CnnFitter, GbdtFitter
from lesion_ml.tune.study import finished, load_study, open_storage, override, study_base, study_names

log = logging.getLogger("lesion_ml.tune.study")  # the tuning log, as before these functions moved here


def best_values(opt_study) -> dict[str, Any]:
    """The best complete trial's parameters (params.yaml keys -> values); none (the untuned params)
    when no trial completed (every one pruned or failed), with a warning."""
    import optuna

    if not opt_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        log.warning("study %s has no complete trial; its untuned params stand in for the best", opt_study.study_name)
        return {}
    return dict(opt_study.best_trial.params)


def outer_scores(fitter: GbdtFitter | CnnFitter, base: TuneBase,
                 values_per_fold: dict[int, dict[str, Any]]) -> np.ndarray:
    """Out-of-fold scores: each outer fold k predicted by a model fitted on its training rows with
    the parameters `values_per_fold[k]` (an empty dict: the untuned params); an image model of
    fold k trains with seed + k, as in the train_cnn stage."""
    data = fitter.data
    oof = np.full(len(data.y), np.nan)
    for k, values in values_per_fold.items():
        valid = data.fold == k
        oof[valid] = fitter.fit_predict(base.with_values(values), ~valid, valid, k)
    return oof


def tuned_vs_default(studies: dict[int | None, Any], fitter: GbdtFitter | CnnFitter, base: TuneBase,
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


@dataclass(frozen=True)
class StudyReport:
    """What a study found, ready to write.

    Attributes:
        summary: everything per study (summary.json less `importances`).
        importances: the parameter importances of the study over all folds.
        histories: "fold <k>" / "all folds" -> that study's trials table (`trials_table`).
        oof: image_id, fold, target and the default and tuned out-of-fold scores, one row per image.
        best_yaml: the params override file of the study over all folds, with a comment on how to apply it.
        html: the report page (`build_tune_report`).
    """

    summary: dict[str, Any]
    importances: dict[str, float]
    histories: dict[str, pd.DataFrame]
    oof: pd.DataFrame
    best_yaml: str
    html: str

    @property
    def trials(self) -> pd.DataFrame:
        """Every study's trials, with a `study` column ("fold <k>", "all folds")."""
        return pd.concat([t.assign(study=label) for label, t in self.histories.items()], ignore_index=True)

    @property
    def full_summary(self) -> dict[str, Any]:
        """summary.json: the summary with the importances."""
        return {**self.summary, "importances": self.importances}

    @property
    def metrics(self) -> dict[str, Any]:
        """The DVC metrics: default and tuned figures, their difference, the best parameters, n_trials."""
        return {k: self.summary[k] for k in ("default", "tuned", "difference", "best_values", "n_trials")}


def study_report(storage_url_: str, name: str, study: StudyConfig, base: TuneBase, data: TuneData,
                 fitter: GbdtFitter | CnnFitter, n_boot: int, best_file: Path | str) -> StudyReport:
    """Default vs tuned on the outer folds of study `name` (its Optuna studies read from the storage
    `storage_url_`), refitted by `fitter` on `data`, with `n_boot` patient-level resamples; the best
    parameters of the study over all folds as an override file. `best_file` is where the caller
    writes that file: the apply command names it."""
    names = study_names(study_base(name, study, base, data.digest()), int(data.fold.max()) + 1)
    storage = open_storage(storage_url_)
    studies = {outer: load_study(storage, n, study) for outer, n in names.items()}
    result, default, tuned, per_fold = tuned_vs_default(studies, fitter, base, n_boot)
    best = best_values(studies[None])
    apply = f"lesion params --merge {best_file}"
    best_yaml = (f"# best parameters of tuning study {name} ({names[None]}); apply with: {apply}\n"
                 + yaml.safe_dump(override(best, base), sort_keys=False))
    summary = _summary(name, study, base, n_boot, names, studies, {**result, "best_values": best}, per_fold, apply)
    histories = {("all folds" if k is None else f"fold {k}"): trials_table(s) for k, s in studies.items()}
    imp = importances(studies[None])
    oof = pd.DataFrame({"image_id": data.ids, "fold": data.fold, "target": data.y, "default": default,
                        "tuned": tuned})
    page = build_tune_report({**summary, "per_fold": {int(k): v for k, v in summary["per_fold"].items()}},
                             histories, imp)
    return StudyReport(summary, imp, histories, oof, best_yaml, page)


def _summary(name: str, study: StudyConfig, base: TuneBase, n_boot: int, names: dict, studies: dict,
             found: dict[str, Any], per_fold: dict[int, dict[str, Any]], apply: str) -> dict[str, Any]:
    """summary.json less the importances; `found`: the comparison and the best values."""
    best = found["best_values"]
    summary = {
        "study": name, "model": study.model, "metric": study.metric, "n_trials": study.n_trials,
        "inner_folds": study.inner_folds, "n_boot": n_boot, **found,
        "default_values": {k: base.value(k) for k in study.space},
        "per_fold": {str(k): {"study": names[k], "values": v, "inner_value": _best_value(studies[k]),
                              "finished_trials": finished(studies[k])} for k, v in per_fold.items()},
        "all_folds": {"study": names[None], "inner_value": _best_value(studies[None]),
                      "finished_trials": finished(studies[None])},
        "apply": apply, "dvc_exp": "dvc exp run " + " ".join(f"-S '{k}={v}'" for k, v in best.items()),
    }
    summary["per_fold"] = {k: summary["per_fold"][k] for k in sorted(summary["per_fold"], key=int)}
    return summary


def _best_value(opt_study) -> float | None:
    try:
        return round(opt_study.best_value, 4)
    except ValueError:  # no complete trial
        return None


def trial_records(trials: pd.DataFrame) -> list[dict[str, Any]]:
    """A trials table as JSON records (missing values as None), for a table artefact."""
    return json.loads(trials.replace({np.nan: None}).to_json(orient="records"))


def study_markdown(summary: dict) -> str:
    """Default vs tuned out of fold, the best parameters and how to apply them, in markdown."""
    m = summary["metric"]
    lines = [f"Study **{summary['study']}** ({summary['model']}, {m}); out of fold:", "",
             "| parameters | ROC-AUC | pAUC80 | PR-AUC |", "|---|---|---|---|"]
    for label in ("default", "tuned"):
        s = summary[label]
        lines.append(f"| {label} | {s['roc_auc']:.4f} | {s['pauc_80']:.4f} | {s['pr_auc']:.4f} |")
    lines += ["", "Best parameters (all folds): " + ", ".join(f"`{k}`={v}" for k, v in summary["best_values"].items()),
              "", f"Apply: `{summary['apply']}`"]
    return "\n".join(lines)


def _history(histories: dict[str, Any], metric: str) -> str:
    """Each study's trial values and best-so-far line against the trial number."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, (label, table) in enumerate(histories.items()):
        done = table[table["state"] == "COMPLETE"].sort_values("number")
        if done.empty:
            continue
        colour = f"C{i % 10}"
        ax.scatter(done["number"], done["value"], s=9, color=colour, alpha=0.5)
        ax.step(done["number"], done["value"].cummax(), where="post", color=colour, lw=1.4, label=label)
    ax.set(xlabel="trial", ylabel=f"inner-CV {metric}", title="Optimisation history (dots: trials; line: best so far)")
    ax.legend(fontsize=7)
    return embed_png(fig)


def build_tune_report(summary: dict[str, Any], histories: dict[str, Any], importances: dict[str, float]) -> str:
    """The HTML text of a tuning study: default vs tuned out of fold (with patient-bootstrap
    intervals and the paired difference), the best parameters, the optimisation history of every
    study (`histories`: label -> trials table of `trials_table`) and the parameter importances of
    the study whose parameters are exported."""
    keys = [("roc_auc", "ROC-AUC"), ("pauc_80", "pAUC80"), ("pr_auc", "PR-AUC")]
    rows = [{"parameters": label, **{f"{title} [95% CI]": with_interval(summary[label], k) for k, title in keys}}
            for label in ("default", "tuned")]
    diff = summary.get("difference", {})
    rows.append({"parameters": "tuned - default", **{
        f"{title} [95% CI]": (f"{diff[k]['difference']:+.4f} [{diff[k]['ci95'][0]:+.4f}, {diff[k]['ci95'][1]:+.4f}]"
                              f", better in {diff[k]['share_better']:.0%} of resamples") if k in diff else "n/a"
        for k, title in keys}})
    best = [{"key": k, "default": summary["default_values"].get(k), "tuned (all folds)": v,
             **{f"fold {f}": summary["per_fold"][f]["values"].get(k) for f in summary["per_fold"]}}
            for k, v in summary["best_values"].items()]
    parts = [
        page_head(f"lesion-ml tuning: {summary['study']}"),
        f"<h1>lesion-ml: tuning study {html.escape(summary['study'])}</h1>",
        f"<p>Model <b>{html.escape(summary['model'])}</b>, objective {html.escape(summary['metric'])}, "
        f"{summary['n_trials']} trials per study, {summary['inner_folds']} patient-grouped inner folds. "
        "Each outer fold has its own study, whose trials only see that fold's training patients; its best "
        "parameters are refitted on those patients and predict the fold. So the tuned row below is an "
        "out-of-fold estimate of tuning and training together, on the same rows as the default row. "
        f"Intervals: 95% patient-level bootstrap ({summary['n_boot']} resamples); the difference row "
        "resamples both models together. An interval spanning 0 means the data cannot tell the two apart.</p>",
        "<h2>Default vs tuned, out of fold</h2>", html_table(rows, list(rows[0])),
        "<h2>Best parameters</h2>",
        "<p>The 'all folds' column comes from a study scored on the outer folds themselves; it is what the "
        f"override file applies: <code>{html.escape(summary['apply'])}</code>.</p>",
        html_table(best, list(best[0]) if best else ["key"]),
        "<h2>Optimisation history</h2>", _history(histories, summary["metric"]),
    ]
    if importances:
        parts += ["<h2>Parameter importance (fANOVA, study 'all folds')</h2>",
                  importance_chart(importances, xlabel="share of the objective's variance",
                                   title="Which parameters mattered")]
    parts.append("</body></html>")
    return "\n".join(parts)
