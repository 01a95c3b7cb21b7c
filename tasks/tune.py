"""Tasks of the tune stage: open the studies, run trials (several tasks at once on a Dask runner),
score default vs tuned out of fold and write the report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from prefect import task
from prefect.cache_policies import NONE

from lesion_ml.config import Params, StudyConfig
from lesion_ml.evaluate.report import build_tune_report
from lesion_ml.io import write_csv, write_json, write_parquet, write_text
from lesion_ml.tune import (TuneData, best_values, finished, importances, load_study, make_fitter, open_storage,
                            override, run_trials, shares, study_base, study_names, trials_table, tuned_vs_default)

_DATA: dict[tuple, TuneData] = {}  # per process: trial tasks of one flow run share the loaded table


def _data(clean: Path, folds: Path) -> TuneData:
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in (clean, folds))
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = TuneData.load(clean, folds)
    return _DATA[key]


@task(cache_policy=NONE)
def plan_trials(storage: str, name: str, study: StudyConfig, base: Params, clean: Path, folds: Path,
                images: Path | None, workers: int) -> list[dict[str, Any]]:
    """Create (or reopen) the study of every outer fold and of all folds, and share out the trials
    each still lacks (n_trials minus those already finished) over at most `workers` tasks."""
    data = _data(clean, folds)
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


@task(cache_policy=NONE)
def tune_trials(storage: str, study_name: str, study: StudyConfig, base: Params, clean: Path, folds: Path,
                images: Path | None, outer: int | None, n_trials: int, salt: int) -> int:
    """Run `n_trials` trials of one study (outer fold `outer`, None: all folds); they are stored as
    they finish, so a killed run loses at most the trials in flight."""
    fitter = make_fitter(_data(clean, folds), base, study.model, images)
    return run_trials(storage, study_name, study, base, fitter, outer, n_trials, salt)


@task(cache_policy=NONE)
def report_study(storage: str, name: str, study: StudyConfig, base: Params, clean: Path, folds: Path,
                 images: Path | None, n_boot: int, out: Path, metrics: Path) -> dict:
    """Default vs tuned on the outer folds, the best parameters and the report: `out`/report.html,
    trials.csv (every study's trials), oof.parquet, best.yaml (the params override of the study
    over all folds), summary.json (everything, per study) and the DVC metrics file `metrics`
    (default and tuned figures, their difference, the best parameters)."""
    data = _data(clean, folds)
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
    raw = base.model_dump(mode="json")
    summary = {
        "study": name, "model": study.model, "metric": study.metric, "n_trials": study.n_trials,
        "inner_folds": study.inner_folds, "n_boot": n_boot, **result, "best_values": best,
        "default_values": {k: _get(raw, k) for k in study.space},
        "per_fold": {str(k): {"study": names[k], "values": v, "inner_value": _best_value(studies[k]),
                              "finished_trials": finished(studies[k])} for k, v in per_fold.items()},
        "all_folds": {"study": names[None], "inner_value": _best_value(studies[None]),
                      "finished_trials": finished(studies[None])},
        "apply": apply, "dvc_exp": "dvc exp run " + " ".join(f"-S '{k}={v}'" for k, v in best.items()),
    }
    summary["per_fold"] = {k: summary["per_fold"][k] for k in sorted(summary["per_fold"], key=int)}
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
    _publish(summary, histories["all folds"])
    return {k: summary[k] for k in ("default", "tuned", "best_values")}


def _best_value(opt_study) -> float | None:
    try:
        return round(opt_study.best_value, 4)
    except ValueError:  # no complete trial
        return None


def _get(raw: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        raw = raw[part]
    return raw


def _publish(summary: dict, trials: pd.DataFrame) -> None:
    """The trials table and the best parameters as artefacts of the flow run (Prefect UI)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = "tune-" + "".join(c if c.isalnum() else "-" for c in summary["study"].lower())
    table = json.loads(trials.replace({np.nan: None}).to_json(orient="records"))
    create_table_artifact(key=f"{key}-trials", table=table, description="trials of the study over all folds")
    m = summary["metric"]
    lines = [f"Study **{summary['study']}** ({summary['model']}, {m}); out of fold:", "",
             "| parameters | ROC-AUC | pAUC80 | PR-AUC |", "|---|---|---|---|"]
    for label in ("default", "tuned"):
        s = summary[label]
        lines.append(f"| {label} | {s['roc_auc']:.4f} | {s['pauc_80']:.4f} | {s['pr_auc']:.4f} |")
    lines += ["", "Best parameters (all folds): " + ", ".join(f"`{k}`={v}" for k, v in summary["best_values"].items()),
              "", f"Apply: `{summary['apply']}`"]
    create_markdown_artifact(key=f"{key}-best", markdown="\n".join(lines), description="default vs tuned")
