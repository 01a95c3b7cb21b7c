"""The external validation's HTML report (lesion validate's report.html): ranking, threshold
transfer, local operating points, calibration, confusion matrix, subgroups and the galleries of
missed cancers and false alarms, in one self-contained file (figures and thumbnails embedded as
base64; no script, no network). The figures come from lesion_ml.model.validate.validate_external.
"""
from __future__ import annotations

import html
from typing import Any

import numpy as np

_STYLE = ("<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
         "font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%}.grid{display:flex;flex-wrap:wrap;"
         "gap:8px}figure{margin:0;font-size:11px;text-align:center}figure img{width:128px}</style></head><body>")


def _reliability_png(cal: dict, y_mean: float) -> str:
    from lesion_ml.evaluate.report import embed_png, plt

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="ideal")
    r = cal["reliability"]
    ax.plot([b["mean_predicted"] for b in r], [b["fraction_malignant"] for b in r], marker="o", ms=4,
            label=f"this set (ECE {cal['ece']:.3f}, slope {cal['slope']:.2f})")
    ax.axhline(y_mean, ls="--", c="tab:orange", lw=1, label=f"prevalence here {y_mean:.3f}")
    ax.set(xlabel="mean predicted probability", ylabel="observed malignant fraction", title="Reliability",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    return embed_png(fig)


def _roc_png(y: np.ndarray, p: np.ndarray, threshold: float, res: dict) -> str:
    from lesion_ml.evaluate.metrics import curve_points
    from lesion_ml.evaluate.report import embed_png, plt

    (fpr, tpr), (rec, prec) = curve_points(y, p)
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(11, 4.6))
    roc.plot(fpr, tpr, lw=1.5, label=f"external (AUC {res['roc_auc']:.3f})")
    tt = res["threshold_transfer"]
    ext, oof = tt["external"], tt["out_of_fold"]
    roc.scatter([1 - ext["specificity"]], [ext["sensitivity"]], c="tab:red", zorder=3,
                label=f"exported threshold {threshold:.3g} here")
    if oof.get("sensitivity") is not None and oof.get("specificity") is not None:
        roc.scatter([1 - oof["specificity"]], [oof["sensitivity"]], marker="x", c="black", zorder=3,
                    label="the same threshold out of fold")
    roc.plot([0, 1], [0, 1], ls=":", c="grey")
    roc.axhspan(0.8, 1.0, color="tab:orange", alpha=0.07, label="pAUC region (TPR > 0.8)")
    roc.set(xlabel="false-positive rate", ylabel="true-positive rate (sensitivity)", title="ROC, external set")
    pr.plot(rec, prec, lw=1.5, label=f"external (AP {res['pr_auc']:.3f})")
    pr.axhline(y.mean(), ls=":", c="grey", label=f"prevalence {y.mean():.3f}")
    pr.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall, external set")
    roc.legend(fontsize=7, loc="lower right")
    pr.legend(fontsize=7, loc="upper right")
    return embed_png(fig)


def _confusion_png(cm: list[list[int]], threshold: float) -> str:
    from lesion_ml.evaluate.report import embed_png, plt

    cm_arr = np.array(cm)
    fig, ax = plt.subplots(figsize=(3.4, 3.2))
    ax.imshow(cm_arr, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm_arr):
        ax.text(j, i, str(v), ha="center", va="center", color="black" if v < cm_arr.max() / 2 else "white")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["benign", "malignant"], yticklabels=["benign", "malignant"],
           xlabel="predicted", ylabel="true", title=f"threshold {threshold:.3g}")
    fig.tight_layout()
    return embed_png(fig)


def _ci(res: dict, key: str, value: float | None = None) -> str:
    v = res[key] if value is None else value
    lo, hi = res["ci95"].get(key, [float("nan")] * 2)
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if v is not None and np.isfinite(v) else "n/a"


def _f(v: float | None) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def build_validation_report(res: dict, y: np.ndarray, p: np.ndarray, shots: dict) -> str:
    """The self-contained HTML report (figures and thumbnails embedded; no script, no network)."""
    from lesion_ml.evaluate.report import html_table

    tt = res["threshold_transfer"]
    cal = res["calibration"]
    ranking = [{"metric": "ROC-AUC", "value [95% CI]": _ci(res, "roc_auc")},
               {"metric": "partial AUC above 80% TPR (0..0.2)", "value [95% CI]": _ci(res, "pauc_80")},
               {"metric": "PR-AUC", "value [95% CI]": _ci(res, "pr_auc")}]
    parts = _header(res)
    parts += [
        "<h2>Ranking</h2>", html_table(ranking, ["metric", "value [95% CI]"]), _roc_png(y, p, res["threshold"], res),
        "<h2>Threshold transfer</h2>",
        f"<p>The exported threshold {res['threshold']:.4g} ({html.escape(str(tt['rule']))}) applied to this set, "
        "next to what it gave on the training data out of fold.</p>",
        html_table(_transfer_rows(res), ["", "out of fold (training data)", "external (this set) [95% CI]"]),
    ]
    if "local_threshold" in res:
        parts += _local_operating_points(res["local_threshold"])
    parts += [
        "<h2>Calibration</h2>", html_table(_calibration_rows(cal), ["", "value"]), _reliability_png(cal, float(y.mean())),
        "<h2>Confusion matrix at the exported threshold</h2>", _confusion_png(res["confusion_matrix"], res["threshold"]),
        "<h2>Subgroups</h2>",
        "<p>Groups of fewer than 10 images are pooled as 'other'. AUC needs both classes in a group.</p>",
        html_table(res["subgroups"], ["attribute", "group", "n", "n_malignant", "roc_auc", "sensitivity", "specificity"])
        if res["subgroups"] else "<p>The labels have no sex, age or site columns.</p>",
        f"<h2>Missed malignant lesions ({shots['n_missed']}, lowest scores first)</h2>", _grid(shots["missed"]),
        f"<h2>Most confident false alarms ({shots['n_false_alarms']}, highest scores first)</h2>",
        _grid(shots["false_alarms"]),
        "</body></html>"]
    return "\n".join(parts)


def _header(res: dict) -> list[str]:
    """The document head and the report's opening paragraphs: what was scored, with which model
    and labels, how the intervals were drawn, and the images left out."""
    unit = res["bootstrap"]["unit"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>lesion-ml external validation</title>",
        _STYLE,
        f"<h1>lesion-ml: external validation of {html.escape(res['model'])}</h1>",
        f"<p>Model folder {html.escape(res['model_path'])}; labels {html.escape(res['labels'])}; {res['date']}. "
        f"{res['n_scored']:,} of {res['n_images']:,} labelled images scored ({res['n_malignant']:,} malignant). "
        f"Intervals: 95% bootstrap over {html.escape(unit)}s ({res['bootstrap']['resamples']} resamples).</p>",
    ]
    if res["unlabelled_images"] or res["unreadable"]:
        parts.append(f"<p>Left out: {len(res['unlabelled_images'])} images without a label "
                     f"({html.escape(', '.join(res['unlabelled_images'][:20]))}), {len(res['unreadable'])} unreadable "
                     f"({html.escape(', '.join(res['unreadable'][:20]))}).</p>")
    return parts


def _transfer_rows(res: dict) -> list[dict[str, str]]:
    """Sensitivity and specificity at the exported threshold: out of fold next to this set's."""
    tt = res["threshold_transfer"]
    return [{"": "sensitivity", "out of fold (training data)": _f(tt["out_of_fold"]["sensitivity"]),
             "external (this set) [95% CI]": _ci({"ci95": res["ci95"], **tt["external"]}, "sensitivity")},
            {"": "specificity", "out of fold (training data)": _f(tt["out_of_fold"]["specificity"]),
             "external (this set) [95% CI]": _ci({"ci95": res["ci95"], **tt["external"]}, "specificity")}]


def _calibration_rows(cal: dict) -> list[dict[str, str]]:
    """The calibration figures of this set, one row each."""
    return [{"": "observed malignant fraction", "value": _f(cal["observed"])},
            {"": "mean predicted probability", "value": _f(cal["mean_predicted"])},
            {"": "calibration in the large (observed - predicted; 0 ideal)", "value": _f(cal["in_the_large"])},
            {"": "calibration slope (1 ideal; < 1: scores too extreme)", "value": _f(cal["slope"])},
            {"": "ECE", "value": _f(cal["ece"])}, {"": "Brier", "value": _f(cal["brier"])}]


def _local_operating_points(lt: dict[str, Any]) -> list[str]:
    """A paragraph per local threshold (`--recalibrate`): the model's and the image-only fallback's,
    where each was chosen."""
    parts = []
    for key, who in (("", "the model"), ("fallback_", "the image-only fallback")):
        if f"{key}threshold" in lt:
            parts.append(f"<p>Local operating point of {who}: threshold {lt[f'{key}threshold']:.4g} reaches "
                         f"sensitivity {_f(lt[f'{key}sensitivity'])} with specificity "
                         f"{_f(lt[f'{key}specificity'])} on the images it scored here (target "
                         f"{lt['target_sensitivity']}; chosen on this set, so met by construction).</p>")
    return parts


def _grid(items: list[dict]) -> str:
    """Thumbnails of `gallery` (lesion_ml.model.validate.gallery) as captioned figures, or "none"."""
    if not items:
        return "<p>none</p>"
    cells = "".join(f"<figure><img alt='{html.escape(t['image_id'])}' src='data:image/jpeg;base64,{t['jpeg']}'>"
                    f"<figcaption>{html.escape(t['image_id'])}<br>p = {t['probability']:.3f}</figcaption></figure>"
                    for t in items)
    return f"<div class='grid'>{cells}</div>"
