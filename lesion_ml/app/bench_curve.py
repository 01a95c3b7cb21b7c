"""`lesion bench curve`: a real-data recipe's learning curve.

The same recipe (an override file such as examples/ham10000-2000.yaml, merged into params.yaml) on
nested subsets of one labelled image folder, each run as `make run` runs it (`lesion server run --
dvc repro`, the validate stage included) in a folder of its own; from each run, the out-of-fold
figures of the exported model and its figures on the external set, at the exported threshold.

The subsets are nested and keep the classes' shares: the lesions (`--group`, e.g. HAM10000's
lesion_id, so that the images of one lesion stay together) of each class are put in one seeded
order, and a subset of n images takes each class's first lesions up to its share of n. The
subset of 400 lies inside that of 1,000, which lies inside that of 2,000.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from lesion_ml import artefacts as cat
from lesion_ml.app.children import own_group
from lesion_ml.config.params import merge_params

def nested_subsets(labels: pd.DataFrame, sizes: list[int], seed: int, group: str | None,
                   target: str = "target") -> dict[int, pd.DataFrame]:
    """For each size n, the rows of `labels` in a subset of about n images (whole groups), nested
    and with the classes' shares of `labels`.

    Raises:
        ValueError: a size larger than `labels`, or no such group or target column.
    """
    for col in [target] + ([group] if group else []):
        if col not in labels.columns:
            raise ValueError(f"the labels have no column {col!r} (--group); columns: {list(labels.columns)}")
    if max(sizes) > len(labels):
        raise ValueError(f"--sizes {max(sizes)}: larger than the set ({len(labels)} images)")
    keys = labels[group] if group else pd.Series(labels.index.astype(str), index=labels.index)
    rng = np.random.default_rng(seed)
    order: dict[int, list[Any]] = {}
    for cls in sorted(labels[target].unique()):
        lesions = sorted(keys[labels[target] == cls].unique())
        order[cls] = [lesions[i] for i in rng.permutation(len(lesions))]
    counts = keys.value_counts()
    subsets = {}
    for n in sorted(sizes):
        chosen: list[Any] = []
        for cls, lesions in order.items():
            want = round(n * float((labels[target] == cls).mean()))
            taken = np.cumsum([counts[k] for k in lesions])
            chosen += lesions[:int(np.searchsorted(taken, want)) + 1] if want else []
        subsets[n] = labels[keys.isin(chosen)]
    return subsets


def write_subset(rows: pd.DataFrame, source: Path, dest: Path, image_column: str) -> None:
    """A labelled folder at `dest`: its labels CSV and its images, hard links to those of `source`
    (copies across file systems; the folder source keeps image paths inside the data folder)."""
    import shutil

    for rel in rows[image_column]:
        target = dest / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / rel, target)
        except OSError:
            shutil.copy2(source / rel, target)
    rows.to_csv(dest / "labels.csv", index=False)


def _figures(workdir: Path, external: str) -> dict[str, Any]:
    """The exported model's out-of-fold figures and its figures on the external set."""
    metrics = json.loads((workdir / cat.METRICS).read_text())
    manifest = json.loads((workdir / cat.FINAL / "manifest.json").read_text())
    m = metrics["models"][manifest["model"]]
    ext = json.loads((workdir / cat.REPORTS / "external" / f"{external}.json").read_text())
    weights = [spec["weights"] for spec in manifest.get("cnn", {}).values()]
    return {"model": manifest["model"],
            "image_models": "fold_average" if any(isinstance(w, list) for w in weights) else "retrain",
            "oof": {"roc_auc": m["roc_auc"], "roc_auc_ci95": m["ci95"]["roc_auc"], "sensitivity": m["recall"],
                    "specificity": m["specificity"], "n": m["n"], "n_positive": m["n_positive"]},
            "external": {"roc_auc": ext["roc_auc"], "roc_auc_ci95": ext["roc_auc_ci95"],
                         "sensitivity": ext["sensitivity"], "specificity": ext["specificity"],
                         "n": ext["n_images"], "n_positive": ext["n_malignant"]}}


def run_size(repo: Path, workdir: Path, subset: Path, external: Path | None, recipe: dict, env: dict[str, str],
             stages: tuple[str, ...] = ()) -> float:
    """The recipe on `subset` in `workdir` (`lesion server run -- dvc repro [stages]`); its seconds.
    Without `external` the recipe's validate sets are dropped (no external set is scored).

    Raises:
        RuntimeError: the run failed; its log is named.
    """
    from lesion_ml.app.bench_scale import copy_project, link_folder

    copy_project(repo, workdir)
    params = merge_params(yaml.safe_load((repo / "params.yaml").read_text()), recipe)
    link_folder(workdir / Path(params["data"]["path"]), subset)
    if external is None:
        params["validate"]["sets"] = {}
    for cfg in params["validate"]["sets"].values():
        link_folder(workdir / Path(cfg["images"]).parent, external)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = workdir / "logs" / "run.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    command = [sys.executable, "-m", "lesion_ml.app.cli", "server", "run", "--", "dvc", "repro", *stages]
    with open(log, "w") as out, own_group(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT) as run:
        code = run.wait()  # an interrupted bench stops the run's whole process group (children.py)
    if code:
        raise RuntimeError(f"the run on {subset} failed (exit {code}); see {log}")
    return time.perf_counter() - start


def learning_curve(data: Path, external: Path, recipe_path: Path, sizes: list[int], workdir: Path,
                   repo: Path = Path("."), seed: int = 0, group: str | None = "lesion_id",
                   out: Path | None = cat.LEARNING_CURVE) -> dict[str, Any]:
    """Run the recipe on nested subsets of `data` (a folder with labels.csv), each judged on
    `external` (the recipe's one validate set); the figures, written to `out` after each size."""
    from lesion_ml.app.bench_scale import pipeline_env
    from lesion_ml.io import write_json

    recipe = yaml.safe_load(recipe_path.read_text())
    sets = list(recipe.get("validate", {}).get("sets", {}))
    if len(sets) != 1:
        raise ValueError(f"{recipe_path}: needs exactly one validate.sets entry (the external set); has {sets}")
    labels = pd.read_csv(data / "labels.csv")
    image_column = "image_file" if "image_file" in labels.columns else labels.columns[0]
    result: dict[str, Any] = {"recipe": recipe_path.as_posix(), "data": data.name, "external": sets[0],
                              "seed": seed, "group": group, "machine": {"cpus": os.cpu_count()},
                              "date": time.strftime("%Y-%m-%d"), "sizes": []}
    for n, rows in nested_subsets(labels, sizes, seed, group).items():
        subset = workdir / f"subset-{n}"
        write_subset(rows, data, subset, image_column)
        run_dir = workdir / f"run-{n}"
        run_dir.mkdir(parents=True, exist_ok=True)
        seconds = run_size(repo.resolve(), run_dir, subset, external, recipe, pipeline_env(run_dir))
        result["sizes"].append({"size": n, "images": len(rows), "malignant": int(rows["target"].sum()),
                                "seconds": round(seconds, 1), **_figures(run_dir, sets[0])})
        if out is not None:
            write_json(result, out)
    return result


def format_curve_table(r: dict[str, Any]) -> str:
    """The learning curve as a markdown table (each run's minutes are in the JSON file: a wall time,
    worth reading only from an otherwise idle machine)."""
    lines = ["| images (malignant) | out-of-fold ROC-AUC [95 % CI] | sens. / spec. | "
             f"{r['external']} ROC-AUC [95 % CI] | sens. / spec. at the exported threshold |",
             "|---|---|---|---|---|"]
    for s in r["sizes"]:
        o, e = s["oof"], s["external"]
        lines.append(f"| {s['images']:,} ({s['malignant']:,}) | {o['roc_auc']:.3f} [{o['roc_auc_ci95'][0]:.3f}, "
                     f"{o['roc_auc_ci95'][1]:.3f}] | {o['sensitivity']:.2f} / {o['specificity']:.2f} | "
                     f"{e['roc_auc']:.3f} [{e['roc_auc_ci95'][0]:.3f}, {e['roc_auc_ci95'][1]:.3f}] | "
                     f"{e['sensitivity']:.2f} / {e['specificity']:.2f} |")
    return "\n".join(lines)


def plot_curve(r: dict[str, Any], path: Path) -> None:
    """ROC-AUC against the number of training images, out of fold and on the external set, with 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x = [s["images"] for s in r["sizes"]]
    for key, label in (("oof", "out of fold"), ("external", r["external"])):
        y = [s[key]["roc_auc"] for s in r["sizes"]]
        err = [[v - s[key]["roc_auc_ci95"][0] for v, s in zip(y, r["sizes"])],
               [s[key]["roc_auc_ci95"][1] - v for v, s in zip(y, r["sizes"])]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    ax.set(xscale="log", xlabel="training images", ylabel="ROC-AUC (95 % CI)", xticks=x,
           title=f"{r['recipe']}: learning curve")
    ax.minorticks_off()
    ax.set_xticklabels([f"{v:,}" for v in x])
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
