"""The tune stage's steps on files (lesion_ml.tune.study runs the studies, lesion_ml.tune.report says
what they found): the training table shared by the trial tasks of a process, the plan that
shares a study's missing trials out over tasks, and the report folder of a study.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from lesion_ml.config import Params, StudyConfig
from lesion_ml.evaluate.report import build_tune_report
from lesion_ml.io import write_csv, write_json, write_parquet, write_text
from lesion_ml.tune.study import (
    TuneData,
    best_values,
    finished,
    importances,
    load_study,
    make_fitter,
    open_storage,
    override,
    shares,
    study_base,
    study_names,
    trials_table,
    tuned_vs_default,
)

_DATA: dict[tuple, TuneData] = {}  # per process: trial tasks of one flow run share the loaded table


def tune_data(clean: Path, folds: Path) -> TuneData:
    """`TuneData.load(clean, folds)`, kept for the next call in this process while both files are unchanged."""
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in (clean, folds))
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = TuneData.load(clean, folds)
    return _DATA[key]


def plan_calls(storage: str, name: str, study: StudyConfig, base: Params, clean: Path, folds: Path,
               images: Path | None, workers: int) -> list[dict[str, Any]]:
    """Create (or reopen) the study of every outer fold and of all folds, and share out the trials
    each still lacks (n_trials minus those already finished) over at most `workers` tasks: the
    keyword arguments of each task (storage, study_name, study, base, clean, folds, images, outer,
    n_trials, salt)."""
    data = tune_data(clean, folds)
    names = study_names(study_base(name, study, base, data.digest()), int(data.fold.max()) + 1)
    storage_ = open_storage(storage)
    calls = []
    for outer, study_name in names.items():
        done = finished(load_study(storage_, study_name, study))
        for w, n in enumerate(shares(max(study.n_trials - done, 0), workers)):
            # a sampler seed per study, worker and resume point: no two tasks replay the same draws
            salt = (outer if outer is not None else 999) * 10_007 + done * 101 + w
            calls.append({"storage": storage, "study_name": study_name, "study": study, "base": base,
                          "clean": clean, "folds": folds, "images": images, "outer": outer, "n_trials": n,
                          "salt": salt})
    return calls


def write_report(storage: str, name: str, study: StudyConfig, base: Params, clean: Path, folds: Path,
                 images: Path | None, n_boot: int, out: Path, metrics: Path) -> tuple[dict, pd.DataFrame]:
    """Default vs tuned on the outer folds, the best parameters and the report: `out`/report.html,
    trials.csv (every study's trials), oof.parquet, best.yaml (the params override of the study
    over all folds), summary.json (everything, per study) and the DVC metrics file `metrics`
    (default and tuned figures, their difference, the best parameters). Returns the summary and
    the trials of the study over all folds."""
    data = tune_data(clean, folds)
    names = study_names(study_base(name, study, base, data.digest()), int(data.fold.max()) + 1)
    storage_ = open_storage(storage)
    studies = {outer: load_study(storage_, n, study) for outer, n in names.items()}
    result, default, tuned, per_fold = tuned_vs_default(studies, make_fitter(data, base, study.model, images), base,
                                                        n_boot)
    best = best_values(studies[None])
    best_file = out / "best.yaml"
    apply = f"lesion params --merge {best_file}"
    write_text(f"# best parameters of tuning study {name} ({names[None]}); apply with: {apply}\n"
               + yaml.safe_dump(override(best, base), sort_keys=False), best_file)
    summary = _summary(name, study, base, n_boot, names, studies, {**result, "best_values": best}, per_fold, apply)
    histories = {("all folds" if k is None else f"fold {k}"): trials_table(s) for k, s in studies.items()}
    imp = importances(studies[None])
    write_csv(pd.concat([t.assign(study=label) for label, t in histories.items()], ignore_index=True),
              out / "trials.csv")
    write_parquet(pd.DataFrame({"image_id": data.ids, "fold": data.fold, "target": data.y,
                                "default": default, "tuned": tuned}), out / "oof.parquet")
    write_text(build_tune_report({**summary, "per_fold": {int(k): v for k, v in summary["per_fold"].items()}},
                                 histories, imp), out / "report.html")
    write_json({**summary, "importances": imp}, out / "summary.json")
    write_json({k: summary[k] for k in ("default", "tuned", "difference", "best_values", "n_trials")}, metrics)
    return summary, histories["all folds"]


def _summary(name: str, study: StudyConfig, base: Params, n_boot: int, names: dict, studies: dict,
             found: dict[str, Any], per_fold: dict[int, dict[str, Any]], apply: str) -> dict[str, Any]:
    """summary.json less the importances; `found`: the comparison and the best values."""
    raw = base.model_dump(mode="json")
    best = found["best_values"]
    summary = {
        "study": name, "model": study.model, "metric": study.metric, "n_trials": study.n_trials,
        "inner_folds": study.inner_folds, "n_boot": n_boot, **found,
        "default_values": {k: _get(raw, k) for k in study.space},
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


def _get(raw: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        raw = raw[part]
    return raw


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
