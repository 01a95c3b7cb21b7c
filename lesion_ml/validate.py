"""External validation: score an exported model (models/final) on a labelled set from elsewhere
(another clinic, camera or collection) and report how far its out-of-fold promises hold there.

    lesion validate --model models/final --images DIR --labels CSV [--metadata CSV] --out DIR
        [--recalibrate --target-sensitivity 0.95 --export DIR]

What a user gets (`validate_external`, `write_validation`):
- ranking: ROC-AUC, ISIC's partial AUC above 80% TPR and PR-AUC, each with a 95% bootstrap
  interval (resampling patients when the labels have a patient_id, else images);
- the threshold transfer: sensitivity and specificity at the model's exported threshold here,
  next to the out-of-fold values the threshold was chosen on;
- calibration: calibration in the large (observed minus mean predicted), the calibration slope
  (logistic regression of the label on the logit of the probability; 1 is ideal, below 1 means
  over-confident scores), and the reliability table and plot;
- the confusion matrix, subgroups (sex, age band, site) where the columns exist;
- a gallery of the missed malignant lesions and of the most confident false alarms.

A local operating point (`recalibrate`) picks a site-specific threshold on the local labelled
set and writes a copy of the model folder with it (`export_recalibrated`); the original is
never touched.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from lesion_ml.bundle import FinalModel, inside
from lesion_ml.config import FolderConfig
from lesion_ml.data.sources import RENAMES, DataError, _canonical, parse_labels, read_csv
from lesion_ml.evaluate.analysis import bootstrap_intervals, calibration, choose_threshold, subgroup_table
from lesion_ml.evaluate.metrics import classification_metrics
from lesion_ml.io import record_written, write_csv, write_json, write_text

log = logging.getLogger(__name__)

LIST_MAX = 20  # ids named in an error message


@dataclass
class LabelledSet:
    """The labelled external images: the canonical table (image_id, target, patient_id, ...),
    whether patients are real (a patient_id or lesion_id column) or one per image, and the
    images found without a label (kept out, listed in the report)."""

    table: pd.DataFrame
    csv: Path
    by_patient: bool
    unlabelled: list[str]


def read_labelled_set(labels: Path, image_ids: list[str], fmt: str = "auto",
                      malignant: tuple[str, ...] = FolderConfig().malignant,
                      ignore_unlabelled: bool = False) -> LabelledSet:
    """The labels CSV (`fmt`: auto, generic, ham10000, isic2019, isic2020: the folder source's
    formats) matched with the ids of the images found under --images.

    Raises:
        DataError: the CSV is unreadable, labels name images that are not there, images have no
            label (unless `ignore_unlabelled`), or only one class is present.
    """
    labels = Path(labels)
    if not labels.is_file():
        raise DataError(f"{labels}: no such file (--labels)")
    cfg = FolderConfig(format=fmt, malignant=malignant)  # type: ignore[arg-type]
    table, _ = parse_labels(read_csv(labels, dtype={"target": "string", "patient_id": "string"}), cfg, labels)
    table["image_id"] = table["image_id"].astype("string").str.strip().str.replace(r"\.(jpe?g|png)$", "",
                                                                                    regex=True)
    by_patient = "patient_id" in table.columns and table["patient_id"].notna().any()
    table = _canonical(table.rename(columns=RENAMES).drop(columns=["image_file"], errors="ignore"), "external",
                       labels)
    have = set(image_ids)
    missing = [i for i in table["image_id"] if i not in have]
    if missing:
        raise DataError(f"{labels}: {len(missing)} of {len(table)} labelled images are not among --images: "
                        f"{missing[:LIST_MAX]}{' ...' if len(missing) > LIST_MAX else ''}; point --images at the "
                        "folder (or HDF5 file) that holds them, or remove their rows from the labels CSV")
    labelled = set(table["image_id"])
    unlabelled = [i for i in image_ids if i not in labelled]
    if unlabelled and not ignore_unlabelled:
        raise DataError(f"{len(unlabelled)} of {len(image_ids)} images under --images have no row in {labels}: "
                        f"{unlabelled[:LIST_MAX]}{' ...' if len(unlabelled) > LIST_MAX else ''}; add their labels, "
                        "or pass --ignore-unlabelled to score only the labelled ones (the others are listed in "
                        "the report)")
    counts = table["target"].value_counts()
    if len(counts) < 2:
        only = int(counts.index[0])
        raise DataError(f"{labels}: all {len(table)} images have target={only}; validation needs both benign (0) "
                        "and malignant (1) images: ROC-AUC, sensitivity and specificity are undefined otherwise")
    return LabelledSet(table, labels, bool(by_patient), unlabelled)


def calibration_fit(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Calibration in the large (observed malignant fraction minus mean probability; 0 is ideal)
    and the calibration slope and intercept (logistic regression of y on logit(p); slope 1 and
    intercept 0 are ideal, a slope below 1 means the scores are too extreme)."""
    from sklearn.linear_model import LogisticRegression

    y, p = np.asarray(y).astype(int), np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p)).reshape(-1, 1)
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(logit, y)
    return {"observed": round(float(y.mean()), 4), "mean_predicted": round(float(p.mean()), 4),
            "in_the_large": round(float(y.mean() - p.mean()), 4),
            "slope": round(float(fit.coef_[0, 0]), 4), "intercept": round(float(fit.intercept_[0]), 4)}


def _operating_point(y: np.ndarray, decision: np.ndarray) -> dict[str, float | None]:
    pos, neg = y == 1, y == 0
    return {"sensitivity": round(float(decision[pos].mean()), 4) if pos.any() else None,
            "specificity": round(float(1 - decision[neg].mean()), 4) if neg.any() else None}


def validate_external(model: FinalModel, labelled: LabelledSet, predictions: pd.DataFrame, n_boot: int = 1000,
                      bins: int = 10, target_sensitivity: float | None = None, seed: int = 0) -> dict[str, Any]:
    """The validation figures of `predictions` (lesion predict's rows for the labelled images).

    `target_sensitivity` also picks a local threshold (the highest reaching it here) and reports
    the operating point there; that figure is fitted on this set, so it is optimistic for it.
    """
    table = labelled.table.set_index("image_id")
    pred = predictions.set_index("image_id").loc[table.index]
    scored = pred["status"].eq("ok").to_numpy()
    y_all = table["target"].to_numpy().astype(int)
    y, p = y_all[scored], pred["probability"].to_numpy(float)[scored]
    decision = pred["decision"].to_numpy(float)[scored].astype(int)
    groups = table["patient_id"].to_numpy()[scored] if labelled.by_patient else table.index.to_numpy()[scored]
    man = model.manifest
    threshold = float(man["threshold"])
    m = classification_metrics(y, p, threshold)
    m["recall"], m["specificity"] = _operating_point(y, decision).values()  # each row by its own model's threshold
    ci = bootstrap_intervals(y, p, groups, threshold, n_boot, seed=seed)
    oof = man.get("metrics", {})
    result: dict[str, Any] = {
        "model": man["model"], "model_path": str(model.path), "labels": str(labelled.csv),
        "date": dt.date.today().isoformat(),
        "n_images": int(len(table)), "n_scored": int(scored.sum()), "n_malignant": int(y.sum()),
        "unreadable": pred.index[~scored].tolist(), "unlabelled_images": labelled.unlabelled,
        "scored_by": {k: int(v) for k, v in pred.loc[scored, "model"].value_counts().items()},
        "bootstrap": {"resamples": n_boot, "unit": "patient" if labelled.by_patient else "image"},
        "roc_auc": m["roc_auc"], "pauc_80": m["pauc_80"], "pr_auc": m["pr_auc"],
        "ci95": {k: ci[k] for k in ("roc_auc", "pauc_80", "pr_auc", "sensitivity", "specificity")},
        "threshold": threshold,
        "threshold_transfer": {
            "threshold": threshold, "rule": man.get("threshold_rule"),
            "external": {"sensitivity": m["recall"], "specificity": m["specificity"]},
            "out_of_fold": {"sensitivity": oof.get("recall"), "specificity": oof.get("specificity")}},
        "confusion_matrix": m["confusion_matrix"],
        "precision": m["precision"], "f1": m["f1"], "accuracy": m["accuracy"],
        "calibration": {**calibration_fit(y, p), **calibration(y, p, bins)},
        "subgroups": subgroup_table(table[scored].reset_index().drop(columns="source", errors="ignore"), p, threshold),
    }
    if target_sensitivity is not None:
        result["local_threshold"] = _local_thresholds(y, p, pred.loc[scored, "model"].to_numpy(), man["model"],
                                                      target_sensitivity)
    return result


def _local_thresholds(y: np.ndarray, p: np.ndarray, used: np.ndarray, main: str, target: float) -> dict[str, Any]:
    """The highest threshold reaching `target` sensitivity on this set, for the model and (when it
    scored some images here) its image-only fallback, each on the images it scored."""
    out: dict[str, Any] = {"target_sensitivity": target,
                           "note": "chosen on this set: its sensitivity here is met by construction"}
    for key, rows in (("threshold", used == main), ("fallback_threshold", used != main)):
        if not rows.any():
            continue
        if len(np.unique(y[rows])) < 2:
            raise DataError(f"--recalibrate: the {rows.sum()} images scored by "
                            f"{'the model' if key == 'threshold' else 'the image-only fallback'} here hold one class "
                            "only; a threshold needs malignant and benign images")
        # the probabilities are those written (6 decimals): lowered by one step, the threshold keeps every
        # image it was chosen to catch when the model recomputes the unrounded probability
        thr = round(choose_threshold(y[rows], p[rows], "sensitivity", target) - 1e-6, 6)
        out[key] = thr
        point = _operating_point(y[rows], (p[rows] >= thr).astype(int))
        out.update(point if key == "threshold" else {f"fallback_{k}": v for k, v in point.items()})
    decision = np.where(used == main, p >= out.get("threshold", np.inf), p >= out.get("fallback_threshold", np.inf))
    out["overall"] = _operating_point(y, decision.astype(int))
    return out


def gallery(store, predictions: pd.DataFrame, table: pd.DataFrame, limit: int = 16, side: int = 128) -> dict:
    """Thumbnails (base64 JPEG) of the missed malignant lesions (lowest scores first) and of the
    most confident false alarms (highest scores first), each with its id and probability."""
    pred = predictions.set_index("image_id").join(table.set_index("image_id")["target"], how="inner")
    pred = pred[pred["status"].eq("ok")]
    missed = pred[(pred["target"] == 1) & (pred["decision"] == 0)].sort_values("probability").head(limit)
    alarms = pred[(pred["target"] == 0) & (pred["decision"] == 1)].sort_values("probability",
                                                                                ascending=False).head(limit)

    def thumbs(rows: pd.DataFrame) -> list[dict]:
        out = []
        for image_id, r in rows.iterrows():
            img = store.get(image_id, side)
            scale = side / max(img.shape[:2])
            img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                             interpolation=cv2.INTER_AREA)
            ok, jpg = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
            out.append({"image_id": str(image_id), "probability": float(r["probability"]),
                        "jpeg": base64.b64encode(jpg.tobytes()).decode()})
        return out

    return {"missed": thumbs(missed), "false_alarms": thumbs(alarms),
            "n_missed": int(((pred["target"] == 1) & (pred["decision"] == 0)).sum()),
            "n_false_alarms": int(((pred["target"] == 0) & (pred["decision"] == 1)).sum())}


def _reliability_png(cal: dict, y_mean: float) -> str:
    from lesion_ml.evaluate.report import _png, plt

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="ideal")
    r = cal["reliability"]
    ax.plot([b["mean_predicted"] for b in r], [b["fraction_malignant"] for b in r], marker="o", ms=4,
            label=f"this set (ECE {cal['ece']:.3f}, slope {cal['slope']:.2f})")
    ax.axhline(y_mean, ls="--", c="tab:orange", lw=1, label=f"prevalence here {y_mean:.3f}")
    ax.set(xlabel="mean predicted probability", ylabel="observed malignant fraction", title="Reliability",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    return _png(fig)


def _roc_png(y: np.ndarray, p: np.ndarray, threshold: float, res: dict) -> str:
    from lesion_ml.evaluate.metrics import curve_points
    from lesion_ml.evaluate.report import _png, plt

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
    return _png(fig)


def _confusion_png(cm: list[list[int]], threshold: float) -> str:
    from lesion_ml.evaluate.report import _png, plt

    cm_arr = np.array(cm)
    fig, ax = plt.subplots(figsize=(3.4, 3.2))
    ax.imshow(cm_arr, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm_arr):
        ax.text(j, i, str(v), ha="center", va="center", color="black" if v < cm_arr.max() / 2 else "white")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["benign", "malignant"], yticklabels=["benign", "malignant"],
           xlabel="predicted", ylabel="true", title=f"threshold {threshold:.3g}")
    fig.tight_layout()
    return _png(fig)


def _ci(res: dict, key: str, value: float | None = None) -> str:
    v = res[key] if value is None else value
    lo, hi = res["ci95"].get(key, [float("nan")] * 2)
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if v is not None and np.isfinite(v) else "n/a"


def _f(v: float | None) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def build_validation_report(res: dict, y: np.ndarray, p: np.ndarray, shots: dict) -> str:
    """The self-contained HTML report (figures and thumbnails embedded; no script, no network)."""
    from lesion_ml.evaluate.report import _table

    tt = res["threshold_transfer"]
    cal = res["calibration"]
    ranking = [{"metric": "ROC-AUC", "value [95% CI]": _ci(res, "roc_auc")},
               {"metric": "partial AUC above 80% TPR (0..0.2)", "value [95% CI]": _ci(res, "pauc_80")},
               {"metric": "PR-AUC", "value [95% CI]": _ci(res, "pr_auc")}]
    transfer = [{"": "sensitivity", "out of fold (training data)": _f(tt["out_of_fold"]["sensitivity"]),
                 "external (this set) [95% CI]": _ci({"ci95": res["ci95"], **tt["external"]}, "sensitivity")},
                {"": "specificity", "out of fold (training data)": _f(tt["out_of_fold"]["specificity"]),
                 "external (this set) [95% CI]": _ci({"ci95": res["ci95"], **tt["external"]}, "specificity")}]
    cal_rows = [{"": "observed malignant fraction", "value": _f(cal["observed"])},
                {"": "mean predicted probability", "value": _f(cal["mean_predicted"])},
                {"": "calibration in the large (observed - predicted; 0 ideal)", "value": _f(cal["in_the_large"])},
                {"": "calibration slope (1 ideal; < 1: scores too extreme)", "value": _f(cal["slope"])},
                {"": "ECE", "value": _f(cal["ece"])}, {"": "Brier", "value": _f(cal["brier"])}]

    def grid(items: list[dict]) -> str:
        if not items:
            return "<p>none</p>"
        cells = "".join(f"<figure><img alt='{html.escape(t['image_id'])}' src='data:image/jpeg;base64,{t['jpeg']}'>"
                        f"<figcaption>{html.escape(t['image_id'])}<br>p = {t['probability']:.3f}</figcaption></figure>"
                        for t in items)
        return f"<div class='grid'>{cells}</div>"

    unit = res["bootstrap"]["unit"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>lesion-ml external validation</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}.grid{display:flex;flex-wrap:wrap;"
        "gap:8px}figure{margin:0;font-size:11px;text-align:center}figure img{width:128px}</style></head><body>",
        f"<h1>lesion-ml: external validation of {html.escape(res['model'])}</h1>",
        f"<p>Model folder {html.escape(res['model_path'])}; labels {html.escape(res['labels'])}; {res['date']}. "
        f"{res['n_scored']:,} of {res['n_images']:,} labelled images scored ({res['n_malignant']:,} malignant). "
        f"Intervals: 95% bootstrap over {html.escape(unit)}s ({res['bootstrap']['resamples']} resamples).</p>",
    ]
    if res["unlabelled_images"] or res["unreadable"]:
        parts.append(f"<p>Left out: {len(res['unlabelled_images'])} images without a label "
                     f"({html.escape(', '.join(res['unlabelled_images'][:20]))}), {len(res['unreadable'])} unreadable "
                     f"({html.escape(', '.join(res['unreadable'][:20]))}).</p>")
    parts += [
        "<h2>Ranking</h2>", _table(ranking, ["metric", "value [95% CI]"]), _roc_png(y, p, res["threshold"], res),
        "<h2>Threshold transfer</h2>",
        f"<p>The exported threshold {res['threshold']:.4g} ({html.escape(str(tt['rule']))}) applied to this set, "
        "next to what it gave on the training data out of fold.</p>",
        _table(transfer, ["", "out of fold (training data)", "external (this set) [95% CI]"]),
    ]
    if "local_threshold" in res:
        lt = res["local_threshold"]
        for key, who in (("", "the model"), ("fallback_", "the image-only fallback")):
            if f"{key}threshold" in lt:
                parts.append(f"<p>Local operating point of {who}: threshold {lt[f'{key}threshold']:.4g} reaches "
                             f"sensitivity {_f(lt[f'{key}sensitivity'])} with specificity "
                             f"{_f(lt[f'{key}specificity'])} on the images it scored here (target "
                             f"{lt['target_sensitivity']}; chosen on this set, so met by construction).</p>")
    parts += [
        "<h2>Calibration</h2>", _table(cal_rows, ["", "value"]), _reliability_png(cal, float(y.mean())),
        "<h2>Confusion matrix at the exported threshold</h2>", _confusion_png(res["confusion_matrix"], res["threshold"]),
        "<h2>Subgroups</h2>",
        "<p>Groups of fewer than 10 images are pooled as 'other'. AUC needs both classes in a group.</p>",
        _table(res["subgroups"], ["attribute", "group", "n", "n_malignant", "roc_auc", "sensitivity", "specificity"])
        if res["subgroups"] else "<p>The labels have no sex, age or site columns.</p>",
        f"<h2>Missed malignant lesions ({shots['n_missed']}, lowest scores first)</h2>", grid(shots["missed"]),
        f"<h2>Most confident false alarms ({shots['n_false_alarms']}, highest scores first)</h2>",
        grid(shots["false_alarms"]),
        "</body></html>"]
    return "\n".join(parts)


def write_validation(out: Path, res: dict, predictions: pd.DataFrame, report: str) -> None:
    """validation.json, predictions.csv and report.html in `out` (each written atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(predictions, out / "predictions.csv")
    write_text(report, out / "report.html")
    write_json(res, out / "validation.json")


def export_recalibrated(model: FinalModel, dest: Path, res: dict, labels: Path) -> Path:
    """A copy of the model folder with the local threshold of `res["local_threshold"]` (and the
    image-only fallback's, when it scored the set) recorded in its manifest and model card.

    Raises:
        DataError: `dest` is the model folder itself or already exists (nothing is overwritten).
    """
    src, dest = Path(model.path), Path(dest)
    if dest.resolve() == src.resolve():
        raise DataError(f"--export {dest} is the model folder itself; the original is never overwritten: name a "
                        "new folder")
    if dest.exists():
        raise DataError(f"--export {dest} already exists; name a new folder (or remove it first)")
    lt = res["local_threshold"]
    man = json.loads(inside(src, "manifest.json", "the manifest").read_text())
    site = {"labels": str(labels), "n_images": res["n_scored"], "n_malignant": res["n_malignant"],
            "date": res["date"], "target_sensitivity": lt["target_sensitivity"], **lt["overall"],
            "original_threshold": man["threshold"], "threshold": lt.get("threshold", man["threshold"])}
    rule = (f"site-specific: the highest threshold with sensitivity >= {lt['target_sensitivity']} on {labels.name} "
            f"({res['n_scored']} images, {res['date']})")
    if "threshold" in lt:
        man["threshold"], man["threshold_rule"] = lt["threshold"], rule
    if "fallback_threshold" in lt and man.get("fallback"):
        site["original_fallback_threshold"] = man["fallback"]["threshold"]
        site["fallback_threshold"] = man["fallback"]["threshold"] = lt["fallback_threshold"]
    man["site_threshold"] = site
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True, symlinks=False)
        (tmp / "manifest.json").write_text(json.dumps(man, indent=1, allow_nan=False) + "\n")
        card = (tmp / "MODEL_CARD.md").read_text() if (tmp / "MODEL_CARD.md").is_file() else ""
        card += ("\n## Site-specific threshold\n\n"
                 f"- Set on {res['date']} from {labels} ({res['n_scored']} labelled images, {res['n_malignant']} "
                 f"malignant) with `lesion validate --recalibrate --target-sensitivity {lt['target_sensitivity']}`.\n"
                 f"- Threshold {site['threshold']:.6g} (exported: {site['original_threshold']:.6g})"
                 + (f", image-only fallback {site['fallback_threshold']:.6g} (exported: "
                    f"{site['original_fallback_threshold']:.6g})" if "fallback_threshold" in site else "")
                 + f": sensitivity {site['sensitivity']:.3f}, specificity {site['specificity']:.3f} on that set. "
                 "It was chosen on the "
                 "same images, so expect somewhat less on new ones; the metrics above are still the training "
                 "data's, out of fold.\n")
        (tmp / "MODEL_CARD.md").write_text(card)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record_written(dest)
    return dest


def run_validation(model_dir: Path | str, images: list[Path | str], labels: Path | str, out: Path | str,
                   metadata: Path | str | None = None, fmt: str = "auto", ignore_unlabelled: bool = False,
                   tta: bool = False, n_boot: int = 1000, device: str = "auto", batch_size: int = 64,
                   workers: int = 0, target_sensitivity: float | None = None,
                   export: Path | str | None = None) -> dict[str, Any]:
    """Score the labelled set with the model folder and write validation.json, predictions.csv and
    report.html to `out`; with `export` (and `target_sensitivity`), also the recalibrated copy.

    Metadata comes from `metadata`, else, when the model needs it, from the labels CSV itself
    (HAM10000, ISIC 2019/2020 and ISIC 2024 label files carry age, sex and site).
    """
    from lesion_ml.predict import open_images, predict_cases, prepare_inputs
    from lesion_ml.train import select_device

    if export is not None and target_sensitivity is None:
        raise DataError("--export writes a recalibrated copy of the model: add --recalibrate (and optionally "
                        "--target-sensitivity)")
    dev = select_device(device)
    model = FinalModel.load(model_dir, dev)
    _, image_ids = open_images(images)
    labelled = read_labelled_set(Path(labels), image_ids, fmt, ignore_unlabelled=ignore_unlabelled)
    from_labels = metadata is None and model.needs_metadata
    if from_labels:
        metadata = labels
    try:
        inputs = prepare_inputs(model, images, Path(metadata) if metadata else None)
    except DataError as err:
        if not from_labels:
            raise
        raise DataError(f"{err} (model {model.manifest['model']!r} uses metadata, read from --labels since no "
                        "--metadata was given: pass --metadata CSV with those columns, empty values allowed)") from None
    keep = set(labelled.table["image_id"])
    inputs.image_ids = [i for i in inputs.image_ids if i in keep]
    if inputs.features is not None:
        inputs.features = inputs.features.loc[[i for i in inputs.features.index if i in keep]]
    pred = predict_cases(model, inputs, dev, batch_size, tta, workers, skip_bad=True)
    res = validate_external(model, labelled, pred, n_boot, target_sensitivity=target_sensitivity)
    res["tta"] = tta
    table = labelled.table
    ok = pred.set_index("image_id").loc[table["image_id"], "status"].eq("ok").to_numpy()
    y = table["target"].to_numpy().astype(int)[ok]
    p = pred.set_index("image_id").loc[table["image_id"], "probability"].to_numpy(float)[ok]
    shots = gallery(inputs.store, pred, table)
    report = build_validation_report(res, y, p, shots)
    out_pred = pred.merge(table[["image_id", "target"]], on="image_id", how="left")
    write_validation(Path(out), res, out_pred, report)
    if export is not None:
        res["exported"] = str(export_recalibrated(model, Path(export), res, Path(labels)))
        write_json(res, Path(out) / "validation.json")
    inputs.store.close()
    return res


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a validation (what `dvc metrics` compares between runs)."""
    tt = res["threshold_transfer"]
    return {"n_images": res["n_scored"], "n_malignant": res["n_malignant"], "roc_auc": res["roc_auc"],
            "roc_auc_ci95": res["ci95"]["roc_auc"], "pauc_80": res["pauc_80"], "pr_auc": res["pr_auc"],
            "threshold": res["threshold"], "sensitivity": tt["external"]["sensitivity"],
            "specificity": tt["external"]["specificity"], "oof_sensitivity": tt["out_of_fold"]["sensitivity"],
            "oof_specificity": tt["out_of_fold"]["specificity"],
            "calibration_slope": res["calibration"]["slope"],
            "calibration_in_the_large": res["calibration"]["in_the_large"], "ece": res["calibration"]["ece"]}
