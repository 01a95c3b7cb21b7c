"""`lesion bench sites`: a recipe left one site out.

The recipe (an override file such as examples/ham10000-2000.yaml) runs with its folds grouped by a
site column (HAM10000's ham_dataset: the four sites that contributed images), one fold per site, so
that every site's images are scored by models trained on the other sites only: a second view of
"another clinic" that does not spend the external set. The run is `lesion server run -- dvc repro
evaluate` in a folder of its own (no final model, no external set); the figures come from its
out-of-fold scores: per site and pooled, each evaluated model's ROC-AUC with a 95 % interval
(resampling `--group`, the lesions) and its sensitivity and specificity at the run's out-of-fold
threshold (chosen on all four sites' scores: how far one threshold carries from site to site).

With the site as the fold group, the site also becomes each row's patient; the patient-relative
feature family would then describe a lesion against its site's other lesions (its "lesion count" is
the site's size, a site label), so the run leaves that family out.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score

from lesion_ml import artefacts as cat
from lesion_ml.config.params import merge_params
from lesion_ml.data.sources import ID_COLUMNS

SITE_FAMILY = "patient_relative"  # engineered per patient: per site, once the site is the fold group


def image_ids(labels: pd.DataFrame) -> pd.Series:
    """The image ids ingest gives a labels CSV's rows: its id column, else the image file's stem."""
    col = next((c for c in ID_COLUMNS if c in labels.columns), None)
    return labels[col].astype(str) if col else labels["image_file"].map(lambda f: Path(str(f)).stem)


def sites_recipe(recipe: dict[str, Any], base: dict[str, Any], site: str, n_sites: int) -> dict[str, Any]:
    """`recipe` with one fold per site (folds grouped by `site`), without external sets or the
    patient-relative features (`base`: the params.yaml the recipe is merged into)."""
    families = merge_params(base, recipe)["prepare"]["features"]
    return merge_params(recipe, {"split": {"n_folds": n_sites}, "data": {"folder": {"group_column": site}},
                                 "prepare": {"features": [f for f in families if f != SITE_FAMILY]},
                                 "validate": {"sets": {}}})


def site_figures(scores: pd.DataFrame, labels: pd.DataFrame, thresholds: dict[str, float], site: str,
                 group: str | None, n_boot: int = 1000) -> dict[str, Any]:
    """Per site and pooled: images, malignant, and each model's ROC-AUC [95 % CI] and sensitivity /
    specificity at its threshold. `scores`: the out-of-fold scores (image_id, fold, target, one
    column per model); `labels`: image_id, the site column and the `group` column.

    Raises:
        ValueError: a fold holding more than one site, or images the labels do not name.
    """
    rows = scores.merge(labels, on="image_id", how="left", validate="one_to_one")
    if rows[site].isna().any():
        raise ValueError(f"{int(rows[site].isna().sum())} scored images have no {site!r} in the labels")
    per_fold = rows.groupby("fold")[site].nunique()
    if (per_fold > 1).any():
        raise ValueError(f"folds holding more than one {site}: {per_fold[per_fold > 1].index.tolist()}; "
                         "leave-one-site-out needs one fold per site")
    out: dict[str, Any] = {"sites": []}
    for name, part in [(s, rows[rows[site] == s]) for s in sorted(rows[site].unique())] + [("pooled", rows)]:
        y = part["target"].to_numpy().astype(int)
        groups = part[group].to_numpy() if group else part["image_id"].to_numpy()
        entry: dict[str, Any] = {"site": name, "images": len(part), "malignant": int(y.sum()),
                                 "models": {m: _model_figures(y, part[m].to_numpy(dtype=float), groups, t, n_boot)
                                            for m, t in thresholds.items()}}
        if name == "pooled":
            out["pooled"] = entry
        else:
            out["sites"].append(entry)
    return out


def site_report(run_dir: Path, labels: pd.DataFrame, site: str, group: str | None, *, recipe: str, data: str,
                seconds: float) -> dict[str, Any]:
    """The report of a finished leave-one-site-out run in `run_dir` (its params.yaml, metrics.json and
    out-of-fold scores), `labels` being the data folder's labels.csv."""
    metrics = json.loads((run_dir / cat.METRICS).read_text())
    scores = pd.read_parquet(run_dir / cat.OOF_SCORES)
    keep = labels.assign(image_id=image_ids(labels))[["image_id", site] + ([group] if group else [])]
    thresholds = {m: float(v["threshold"]) for m, v in metrics["models"].items()}
    final = yaml.safe_load((run_dir / "params.yaml").read_text())["final"]["model"]
    return {"recipe": recipe, "data": data, "site_column": site, "group": group,
            "exported_model": metrics["best_model"] if final == "best" else final,
            "left_out_features": [SITE_FAMILY], "machine": {"cpus": os.cpu_count()},
            "date": time.strftime("%Y-%m-%d"), "seconds": round(seconds, 1),
            "threshold": {m: round(t, 6) for m, t in thresholds.items()},
            **site_figures(scores, keep, thresholds, site, group)}


def _model_figures(y: np.ndarray, p: np.ndarray, groups: np.ndarray, t: float, n_boot: int) -> dict[str, Any]:
    """ROC-AUC [95 % CI] (None with one class) and sensitivity / specificity at `t`."""
    from lesion_ml.evaluate.analysis import bootstrap_intervals

    both = 0 < y.sum() < len(y)
    ci = bootstrap_intervals(y, p, groups, t, n_boot=n_boot)["roc_auc"] if both else None
    return {"roc_auc": round(float(roc_auc_score(y, p)), 4) if both else None,
            "roc_auc_ci95": [round(float(v), 4) for v in ci] if ci else None,
            "sensitivity": round(float((p[y == 1] >= t).mean()), 4) if y.sum() else None,
            "specificity": round(float((p[y == 0] < t).mean()), 4) if (y == 0).any() else None}


def leave_one_site_out(data: Path, recipe_path: Path, workdir: Path, site: str = "ham_dataset",
                       group: str | None = "lesion_id", repo: Path = Path("."),
                       out: Path | None = cat.LEAVE_ONE_SITE_OUT) -> dict[str, Any]:
    """Run the recipe on `data` (a folder with labels.csv) with one fold per value of `site`; the
    figures (see `site_figures`), written to `out`.

    Raises:
        ValueError: `site` or `group` is not a column of the labels, or names fewer than 2 sites.
    """
    from lesion_ml.app.bench_curve import run_size
    from lesion_ml.app.bench_scale import pipeline_env
    from lesion_ml.io import write_json

    labels = pd.read_csv(data / "labels.csv")
    for col, flag in ((site, "--site"), (group, "--group")):
        if col and col not in labels.columns:
            raise ValueError(f"{data / 'labels.csv'}: no column {col!r} ({flag}); columns: {list(labels.columns)}")
    n_sites = int(labels[site].nunique())
    if n_sites < 2:
        raise ValueError(f"{data / 'labels.csv'}: {site!r} (--site) names {n_sites} site; leaving one out needs 2")
    repo = repo.resolve()
    recipe = sites_recipe(yaml.safe_load(recipe_path.read_text()), yaml.safe_load((repo / "params.yaml").read_text()),
                          site, n_sites)
    run_dir = workdir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    seconds = run_size(repo, run_dir, data.resolve(), None, recipe, pipeline_env(run_dir), stages=("evaluate",))
    result = site_report(run_dir, labels, site, group, recipe=recipe_path.as_posix(), data=data.name,
                         seconds=seconds)
    if out is not None:
        write_json(result, out)
    return result


def table_models(r: dict[str, Any]) -> list[str]:
    """The models a table shows: the recipe's exported model, and the metadata model beside it."""
    from lesion_ml.catalogue import GBDT

    return [r["exported_model"]] + [m for m in (GBDT,) if m in r["threshold"] and m != r["exported_model"]]


def _cell(m: dict[str, Any]) -> str:
    if m["roc_auc"] is None:
        return "n/a (one class)"
    lo, hi = m["roc_auc_ci95"]
    return f"{m['roc_auc']:.3f} [{lo:.3f}, {hi:.3f}]"


def format_sites_table(r: dict[str, Any], models: list[str]) -> str:
    """Per site and pooled: images (malignant), and for each of `models` its ROC-AUC [95 % CI] and
    sensitivity / specificity at the run's out-of-fold threshold."""
    head = "| left-out site | images (malignant) | " + " | ".join(
        f"{m} ROC-AUC [95 % CI] | {m} sens. / spec." for m in models) + " |"
    lines = [head, "|---|---|" + "---|---|" * len(models)]
    for s in r["sites"] + [r["pooled"]]:
        cells = []
        for m in models:
            f = s["models"][m]
            sens = "n/a" if f["sensitivity"] is None else f"{f['sensitivity']:.2f}"
            spec = "n/a" if f["specificity"] is None else f"{f['specificity']:.2f}"
            cells += [_cell(f), f"{sens} / {spec}"]
        name = f"**pooled ({len(r['sites'])} sites)**" if s["site"] == "pooled" else s["site"]
        lines.append(f"| {name} | {s['images']:,} ({s['malignant']:,}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)
