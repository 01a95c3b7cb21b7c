"""The model comparison as one self-contained HTML file: tables with intervals, subgroup tables and
matplotlib figures embedded as base64 PNG (no script, no network; opens offline)."""
from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lesion_ml.evaluate.metrics import curve_points  # noqa: E402


def embed_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _curves(y: np.ndarray, scores: dict[str, np.ndarray]) -> str:
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(11, 4.6))
    for name, p in scores.items():
        (fpr, tpr), (rec, prec) = curve_points(y, p)
        roc.plot(fpr, tpr, label=name, lw=1.4)
        pr.plot(rec, prec, label=name, lw=1.4)
    roc.plot([0, 1], [0, 1], ls=":", c="grey")
    roc.axhspan(0.8, 1.0, color="tab:orange", alpha=0.07, label="pAUC region (TPR > 0.8)")
    roc.set(xlabel="false-positive rate", ylabel="true-positive rate (sensitivity)", title="ROC, out of fold")
    pr.axhline(y.mean(), ls=":", c="grey", label=f"prevalence {y.mean():.3f}")
    pr.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall, out of fold")
    roc.legend(fontsize=7, loc="lower right")
    pr.legend(fontsize=7, loc="upper right")
    return embed_png(fig)


def _calibration(cal: dict[str, dict]) -> str:
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    for name, c in cal.items():
        r = c["reliability"]
        if not r:  # rank ensembles have no probabilities
            continue
        ax.plot([b["mean_predicted"] for b in r], [b["fraction_malignant"] for b in r], marker="o", ms=3,
                label=f"{name} (ECE {c['ece']:.3f})")
    ax.set(xlabel="mean predicted probability", ylabel="observed malignant fraction", title="Reliability")
    ax.legend(fontsize=7)
    return embed_png(fig)


def _confusions(models: dict[str, dict]) -> str:
    n = len(models)
    cols = min(n, 4)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.2 * cols, 3.0 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (name, m) in zip(axes.ravel(), models.items()):
        cm = np.array(m["confusion_matrix"])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="black" if v < cm.max() / 2 else "white")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["benign", "malignant"], yticklabels=["benign", "malignant"],
               xlabel="predicted", ylabel="true", title=f"{name}\nthreshold {m['threshold']:.3g}")
        ax.title.set_fontsize(8)
    fig.tight_layout()
    return embed_png(fig)


def _folds(models: dict[str, dict]) -> str:
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(models)), 3.8))
    for i, m in enumerate(models.values()):
        vals = [v for v in m["fold_roc_auc"].values() if v is not None]
        ax.scatter(np.full(len(vals), i), vals, s=14)
        ax.hlines(m["roc_auc"], i - 0.3, i + 0.3, color="black")
    ax.set_xticks(range(len(models)), list(models), rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="ROC-AUC", title="Per-fold ROC-AUC (dots) and pooled out-of-fold (bar)")
    return embed_png(fig)


def importance_chart(imp: dict[str, float], top: int = 20, xlabel: str = "mean gain importance over folds",
                title: str = "LightGBM metadata model: top features") -> str:
    items = sorted(imp.items(), key=lambda kv: kv[1])[-top:]
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(items) + 1))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set(xlabel=xlabel, title=title)
    ax.tick_params(labelsize=7)
    return embed_png(fig)


def page_head(title: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
            "font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
            "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>")


def html_table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _f(v: float | None) -> str:
    return f"{v:.3f}" if v is not None and np.isfinite(v) else "n/a"


def with_interval(m: dict, key: str) -> str:
    lo, hi = m["ci95"].get(key, [float("nan")] * 2)
    v = m[key]
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if v is not None and np.isfinite(v) else "n/a"


def build_report(y: np.ndarray, scores: dict[str, np.ndarray], models: dict[str, dict[str, Any]],
                 subgroups: dict[str, list[dict]], importance: dict[str, float], meta: dict[str, Any]) -> str:
    """The HTML text. `models[name]` holds the metrics of `lesion_ml.evaluate` (with "ci95",
    "calibration", "threshold"), `subgroups[name]` the subgroup rows, `meta` the data summary."""
    order = sorted(models, key=lambda n: -(models[n]["roc_auc"] or 0))
    comparison = [{"model": n, "ROC-AUC [95% CI]": with_interval(models[n], "roc_auc"),
                   "pAUC80 [95% CI]": with_interval(models[n], "pauc_80"), "PR-AUC [95% CI]": with_interval(models[n], "pr_auc"),
                   "threshold": f"{models[n]['threshold']:.4g}",
                   "sensitivity [95% CI]": with_interval({**models[n], "sensitivity": models[n]["recall"]}, "sensitivity"),
                   "specificity [95% CI]": with_interval(models[n], "specificity"),
                   "precision": f"{models[n]['precision']:.3f}", "F1": f"{models[n]['f1']:.3f}",
                   "ECE": _f(models[n]["calibration"]["ece"]), "Brier": _f(models[n]["calibration"]["brier"])}
                  for n in order]
    best = order[0]
    parts = [
        page_head("lesion-ml model comparison"),
        "<h1>lesion-ml: model comparison</h1>",
        f"<p>{meta['n']:,} lesions ({meta['n_malignant']:,} malignant) from {meta['n_patients']:,} patients, "
        f"{meta['n_folds']} patient-grouped folds. Every number is out of fold: each lesion is scored by models "
        "that never saw its patient. Intervals: 95% patient-level bootstrap "
        f"({meta['n_boot']} resamples). Thresholds: {html.escape(meta['threshold_rule'])}, chosen on the "
        "out-of-fold scores, so the sensitivity at it is met by construction.</p>",
        "<h2>Comparison</h2>", html_table(comparison, list(comparison[0])),
        "<h2>ROC and precision-recall</h2>", _curves(y, {n: scores[n] for n in order}),
        "<h2>Calibration</h2>", _calibration({n: models[n]["calibration"] for n in order}),
        "<h2>Confusion matrices at the operating threshold</h2>", _confusions({n: models[n] for n in order}),
        "<h2>Spread over folds</h2>", _folds({n: models[n] for n in order}),
    ]
    if importance:
        parts += ["<h2>Metadata feature importance</h2>", importance_chart(importance)]
    parts += [f"<h2>Subgroups: {html.escape(best)}</h2>",
              "<p>Groups of fewer than 10 lesions are pooled as 'other'. AUC needs both classes in a group.</p>",
              html_table(subgroups.get(best, []), ["attribute", "group", "n", "n_malignant", "roc_auc", "sensitivity",
                                               "specificity"])]
    for n in order[1:]:
        parts += [f"<details><summary>Subgroups: {html.escape(n)}</summary>",
                  html_table(subgroups.get(n, []), ["attribute", "group", "n", "n_malignant", "roc_auc", "sensitivity",
                                                "specificity"]), "</details>"]
    parts.append("</body></html>")
    return "\n".join(parts)

