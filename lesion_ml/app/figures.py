"""Figures that cannot go stale: the marked regions of README.md and docs/*.md, written from committed reports.

A region is a line `<!-- figures:NAME -->`, the figures, and a line `<!-- /figures -->`. `lesion docs` replaces
what lies between the two markers with what `REGIONS[NAME]` writes from the reports folder, and
`lesion docs --check` names every page whose regions differ from that. Each table names its machine and date
once, in its caption, taken from the report (or, for a report that does not record them, from the `reports`
entry of the timings file).

| region | written from |
|---|---|
| demo-metrics | the demo's metrics and ingest reports (`lesion metrics`' table) |
| timings | the timings file: a fresh clone's `make run` and `make test`, and the test count (`scripts/timings.py`) |
| scale, scale-48px | `lesion bench scale` at ISIC 2024 size (32 px and 48 px image models) |
| gpu-check | `scripts/gpu_check.sh --json` |
| learning-curve | `lesion bench curve`: a real-data recipe on nested subsets (its plot: docs/figures) |
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from lesion_ml import artefacts
from lesion_ml.evaluate.compare import metrics_text

README = "README.md"
TIMINGS = artefacts.REPORTS / "timings.json"  # scripts/timings.py: `make run` / `make test` and the test count
GPU_CHECK = artefacts.REPORTS / "gpu_check.json"  # `scripts/gpu_check.sh --json`
SCALE_48PX = artefacts.SCALE.with_name("scale_48px.json")  # `lesion bench scale --overrides` at 48 px
REGION = re.compile(r"(<!-- figures:([\w-]+) -->\n)(.*?)(<!-- /figures -->)", re.S)
START = re.compile(r"<!-- figures:([\w-]+) -->")


def _report(root: Path, rel: Path) -> dict:
    path = Path(root) / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a figures region of the docs is written from it")
    return json.loads(path.read_text(encoding="utf-8"))


def duration(seconds: float) -> str:
    """`652` -> `10 min 52 s`; under a minute, `31 s`."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _measured(root: Path, rel: Path) -> dict:
    """The machine and date of a report that does not record them (the timings file's `reports` entry)."""
    found = _report(root, TIMINGS).get("reports", {}).get(rel.name)
    if not found:
        raise KeyError(f"{Path(root) / TIMINGS}: no reports.{rel.name} entry naming its machine and date")
    return found


def demo_metrics(root: Path) -> str:
    """The demo's out-of-fold table as `lesion metrics` prints it, with the data's counts and the chosen model."""
    metrics, ingest = _report(root, artefacts.METRICS), _report(root, artefacts.INGEST_REPORT)
    counts = f"{ingest['n_images']:,} lesions, {ingest['n_malignant']:,} malignant, {ingest['n_patients']:,} patients"
    sel = metrics["selection"]
    return (f"On the demo set ({counts}: `{artefacts.INGEST_REPORT.as_posix()}`) `make run` ends with this "
            f"out-of-fold table, `lesion metrics` printing `{artefacts.METRICS.as_posix()}`. Recall and "
            "specificity are at each model's operating threshold (by default the highest with out-of-fold "
            "sensitivity 0.95).\n\n```\n" + metrics_text(metrics) + "\n```\n\n"
            f"Chosen for export by `{sel['metric']}`: `{sel['chosen']}` (leader `{sel['leader']}`, runner-up "
            f"`{sel['runner_up']}`; the leader's margin {sel['margin']['difference']:+.4f}, 95 % interval "
            f"[{sel['margin']['ci95'][0]:+.4f}, {sel['margin']['ci95'][1]:+.4f}]).\n")


def timings(root: Path) -> str:
    """How long the two commands take, and how many tests pass, on the machine the timings file names."""
    t = _report(root, TIMINGS)
    run, test = t["make_run"], t["make_test"]
    return ("| command | took | what was measured |\n|---|---|---|\n"
            f"| `make run` | {duration(run['seconds'])} | {run['scope']} |\n"
            f"| `make test` | {duration(test['seconds'])} | {test['passed']:,} tests passed; {test['scope']} |\n\n"
            f"Measured on {t['machine']}, {t['date']}, by `python3 scripts/timings.py` (`{TIMINGS.as_posix()}`).\n")


def _gib(value: float | None) -> str:
    return f"{value:.2f} GiB" if value is not None else ""


def scale_table(root: Path, rel: Path) -> str:
    """A `lesion bench scale` report: each stage's wall time and peak memory, the whole run, `lesion predict`,
    the inference rates against the bare forward pass and the out-of-fold figures."""
    s, where = _report(root, rel), _measured(root, rel)
    d, p = s["data"], s["predict"]
    lines = [f"Measured by `lesion bench scale` on {s['machine']['cpus']} CPU cores ({where['machine']}), "
             f"{where['date']} (`{rel.as_posix()}`): {d['lesions']:,} lesions, {d['patients']:,} patients, "
             f"{d['malignant']:,} malignant.", "",
             "| stage (`dvc repro --single-item`) | wall time | peak RSS, largest process | peak RSS, process tree |",
             "|---|---|---|---|"]
    lines += [f"| {st['stage']} | {st['seconds']:,.0f} s | {_gib(st['peak_rss_gib'])} | "
              f"{_gib(st['peak_rss_tree_gib'])} |" for st in s["stages"]]
    lines += [f"| **whole `dvc repro`** | **{s['dvc_repro_seconds']:,.0f} s ({duration(s['dvc_repro_seconds'])})** "
              "| | |",
              f"| `lesion predict` on {p['images']:,} images (`--workers {p['workers']} --batch-size "
              f"{p['batch_size']}`) | {p['seconds']:,.0f} s | {_gib(p['peak_rss_gib'])} | "
              f"{_gib(p['peak_rss_tree_gib'])} |", ""]
    lines.append(f"- `lesion predict`: {p['images_per_s']:,.0f} images/s, {p['ratio_vs_bare']:.2f} x the bare forward "
                 f"pass ({p['bare_forward_per_s']:,.0f}/s); its image pass {p['image_pass_ratio_vs_bare']:.2f} x.")
    lines.append("- Out-of-fold inference inside training: " + "; ".join(
        f"{name} {o['images_per_s']:,.0f} images/s, {o['ratio_vs_bare']:.2f} x its bare forward pass "
        f"({o['bare_forward_per_s']:,.0f}/s)" for name, o in s["oof_inference"].items()) + ".")
    models = sorted(s["metrics"]["models"].items(), key=lambda kv: -kv[1]["roc_auc"])
    lines.append(f"- Out of fold, ROC-AUC / pAUC80 (chosen: {s['metrics']['best_model']}): " + "; ".join(
        f"{name} {m['roc_auc']:.3f} / {m['pauc_80']:.3f}" for name, m in models) + ".")
    return "\n".join(lines) + "\n"


def gpu_check(root: Path) -> str:
    """The GPU check's figures: per backbone, the loader-fed rates against the bare GPU step and forward pass."""
    f = _report(root, GPU_CHECK)

    def rate(a: float | None, b: float | None) -> str:
        return f"{a:,.0f} / {b:,.0f}" if a is not None and b is not None else "not measured"

    def ratio(x: float | None) -> str:
        return f"{x:.2f}" if x is not None else "not measured"

    lines = [f"`{f['command']}` on {f['date']}: {f['device']} (torch {f['torch']}, {f['cpu_cores']} CPU cores, "
             f"{f['loader_workers']} loader workers), {f['images']:,} generated tiles, {f['image_size']} px, batch "
             f"{f['batch_size']}, {f['epochs']} epochs of fold 0 (5 folds), {f['amp']} (`{GPU_CHECK.as_posix()}`).",
             "", "| backbone | train: loader / bare step | images/s (loader / bare) | inference: loader / bare forward "
             "| images/s (loader / bare) | epoch times (s) | peak GPU memory | valid ROC-AUC |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in f["models"].items():
        lines.append(f"| {name} | {ratio(m['train_ratio'])} | "
                     f"{rate(m['last_epoch_images_per_s'], m['bare_train_step_images_per_s'])} | "
                     f"{ratio(m['inference_ratio'])} | "
                     f"{rate(m['inference_images_per_s'], m['bare_forward_images_per_s'])} | "
                     f"{', '.join(str(e) for e in m['train_epoch_s'])} | {_gib(m['peak_gpu_memory_gib'])} | "
                     f"{m['valid_roc_auc']:.3f} |")
    if f.get("note"):
        lines += ["", str(f["note"])]
    if f.get("loader_table"):
        lines += ["", "Input path profile (`lesion bench loader` on the same tiles):", "", "```", f["loader_table"], "```"]
    return "\n".join(lines) + "\n"


EXPORTED = {"retrain": "retrained on every image", "fold_average": "mean of the fold models"}


def learning_curve(root: Path) -> str:
    """`lesion bench curve`'s table and plot, with the recipe, the machine and the date."""
    from lesion_ml.app.bench_curve import format_curve_table

    r = _report(root, artefacts.LEARNING_CURVE)
    return (format_curve_table(r) + "\n\n"
            f"![learning curve]({artefacts.LEARNING_CURVE_PLOT.relative_to('docs').as_posix()})\n\n"
            f"`{r['recipe']}` on nested subsets of `{r['data']}` (seed {r['seed']}, lesions kept whole by "
            f"`{r['group']}`), each run as `make run` runs it, judged on `{r['external']}`; the exported model "
            f"(`{r['sizes'][-1]['model']}`, {EXPORTED.get(r['sizes'][-1].get('image_models'), 'retrained')}), its "
            "sensitivity and specificity at its threshold. Measured on "
            f"{r['machine']['cpus']} CPU cores, {r['date']}, by `lesion bench curve` "
            f"(`{artefacts.LEARNING_CURVE.as_posix()}`).\n")


def leave_one_site_out(root: Path) -> str:
    """`lesion bench sites`'s table (the exported model and the metadata model), beside the recipe's
    out-of-fold figure on lesion-grouped folds from the learning curve's largest run."""
    from lesion_ml.app.bench_sites import format_sites_table, table_models

    r = _report(root, artefacts.LEAVE_ONE_SITE_OUT)
    full = _report(root, artefacts.LEARNING_CURVE)["sizes"][-1]
    o = full["oof"]
    return (format_sites_table(r, table_models(r)) + "\n\n"
            f"`{r['recipe']}` on `{r['data']}` with one fold per `{r['site_column']}` value: each site scored by "
            f"models trained on the others, sensitivity and specificity at the run's out-of-fold threshold "
            f"(intervals resample `{r['group']}`). The same recipe on {full['images']:,} images with folds "
            f"grouped by lesion (`{artefacts.LEARNING_CURVE.as_posix()}`): `{full['model']}` out-of-fold "
            f"ROC-AUC {o['roc_auc']:.3f} [{o['roc_auc_ci95'][0]:.3f}, {o['roc_auc_ci95'][1]:.3f}]. Measured on "
            f"{r['machine']['cpus']} CPU cores, {r['date']}, by `lesion bench sites` "
            f"(`{artefacts.LEAVE_ONE_SITE_OUT.as_posix()}`).\n")


def real_data(root: Path) -> str:
    """The two HAM10000 examples, each on all of its images as `make run` runs it: out of fold and on
    the external set, with the run's wall time."""
    rows = [("examples/ham10000-400.yaml", _report(root, artefacts.RECIPE_400), artefacts.RECIPE_400),
            ("examples/ham10000-2000.yaml", _report(root, artefacts.LEARNING_CURVE), artefacts.LEARNING_CURVE)]
    ext = rows[0][1]["external"]
    lines = ["| `make run PARAMS=...` | images (malignant) | out-of-fold ROC-AUC [95 % CI] | "
             f"{ext} ROC-AUC [95 % CI] | {ext} sens. / spec. | exported image model | minutes (2 CPU cores) | "
             "measured |", "|---|---|---|---|---|---|---|---|"]
    for recipe, r, rel in rows:
        s = r["sizes"][-1]
        o, e = s["oof"], s["external"]
        lines.append(f"| `{recipe}` | {s['images']:,} ({s['malignant']:,}) | {o['roc_auc']:.3f} "
                     f"[{o['roc_auc_ci95'][0]:.3f}, {o['roc_auc_ci95'][1]:.3f}] | {e['roc_auc']:.3f} "
                     f"[{e['roc_auc_ci95'][0]:.3f}, {e['roc_auc_ci95'][1]:.3f}] | {e['sensitivity']:.2f} / "
                     f"{e['specificity']:.2f} | {EXPORTED.get(s.get('image_models'), 'retrained')} | "
                     f"{s['seconds'] / 60:.1f} | {r['date']}, `{rel.as_posix()}` |")
    return "\n".join(lines) + ("\n\nEach run by `lesion bench curve` as `make run` runs it (`dvc repro`, the "
                               "validate stage included); the exported model's sensitivity and specificity at its "
                               "threshold.\n")


REGIONS: dict[str, Callable[[Path], str]] = {
    "demo-metrics": demo_metrics,
    "timings": timings,
    "scale": lambda root: scale_table(root, artefacts.SCALE),
    "scale-48px": lambda root: scale_table(root, SCALE_48PX),
    "gpu-check": gpu_check,
    "learning-curve": learning_curve,
    "leave-one-site-out": leave_one_site_out,
    "real-data": real_data,
}


def fill(text: str, root: Path, where: str = "") -> str:
    """`text` with every figures region rewritten from the reports under `root` (the repository root)."""
    starts = START.findall(text)
    found = REGION.findall(text)
    if len(starts) != len(found):
        raise ValueError(f"{where}: a `<!-- figures:NAME -->` marker without its `<!-- /figures -->`")
    unknown = sorted({name for name in starts if name not in REGIONS})
    if unknown:
        raise ValueError(f"{where}: unknown figures region {unknown}; known: {sorted(REGIONS)}")
    return REGION.sub(lambda m: m.group(1) + REGIONS[m.group(2)](root).rstrip("\n") + "\n" + m.group(4), text)


def figure_pages(docs: Path) -> list[Path]:
    """The pages whose regions `lesion docs` fills: README.md beside the docs folder, and the docs folder's pages."""
    readme = Path(docs).resolve().parent / README
    return ([readme] if readme.is_file() else []) + sorted(Path(docs).glob("*.md"))


def stale_figures(docs: Path) -> list[Path]:
    """The pages whose figures regions differ from what the committed reports give."""
    root = Path(docs).resolve().parent
    stale = []
    for page in figure_pages(docs):
        text = page.read_text(encoding="utf-8")
        if fill(text, root, where=str(page)) != text:
            stale.append(page)
    return stale


def write_figures(docs: Path) -> list[Path]:
    """Rewrite the figures regions of every page whose regions are stale; return those pages."""
    from lesion_ml.io import write_text

    root = Path(docs).resolve().parent
    stale = stale_figures(docs)
    return [write_text(fill(p.read_text(encoding="utf-8"), root, where=str(p)), p) for p in stale]
