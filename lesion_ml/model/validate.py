"""External validation: how far an exported model's (models/final) out-of-fold promises hold on a
labelled set from elsewhere (another clinic, camera or collection).

    lesion validate --model models/final --images DIR --labels CSV [--metadata CSV] --out DIR
        [--recalibrate --target-sensitivity 0.95 --export DIR]

This module takes data and returns data: the labels table, the loaded model, its inputs (an open
image store) and config values in; the figures (a dict), the per-image scores (a frame), the
report (an HTML string) and a recalibrated manifest out. lesion_ml.app.validation reads the
files, calls it and writes the outputs, for `lesion validate` and stage validate@<name> alike.

What a user gets (`score_labelled`, built on `validate_external` and `gallery`):
- ranking: ROC-AUC, ISIC's partial AUC above 80% TPR and PR-AUC, each with a 95% bootstrap
  interval (resampling patients when the labels have a patient_id, else images);
- the threshold transfer: sensitivity and specificity at the model's exported threshold here,
  next to the out-of-fold values the threshold was chosen on;
- calibration: calibration in the large (observed minus mean predicted), the calibration slope
  (logistic regression of the label on the logit of the probability; 1 is ideal, below 1 means
  over-confident scores), and the reliability table and plot;
- the confusion matrix, subgroups (sex, age band, site) where the columns exist;
- a gallery of the missed malignant lesions and of the most confident false alarms.

A local operating point (`target_sensitivity`) picks a site-specific threshold on the local
labelled set; `recalibrated` gives the manifest and model card of a copy of the model with it (the
original is never touched). The HTML report is built by lesion_ml.model.validate_report.
"""
from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from lesion_ml.config import FolderConfig
from lesion_ml.data.images import ImageStore
from lesion_ml.data.sources import RENAMES, VALIDATE, canonical_table, parse_labels
from lesion_ml.errors import DataError
from lesion_ml.evaluate.analysis import bootstrap_intervals, calibration, choose_threshold, subgroup_table
from lesion_ml.evaluate.metrics import classification_metrics
from lesion_ml.model.bundle import FinalModel
from lesion_ml.model.predict import Inputs, predict_cases
from lesion_ml.model.validate_report import build_validation_report

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


def match_labels(raw: pd.DataFrame, image_ids: list[str], csv: Path, fmt: str = "auto",
                 malignant: tuple[str, ...] = FolderConfig().malignant,
                 ignore_unlabelled: bool = False) -> LabelledSet:
    """The labels table `raw` (as read from the CSV `csv`, which messages name; `fmt`: auto,
    generic, ham10000, isic2019, isic2020: the folder source's formats) matched with `image_ids`,
    the ids of the images found under --images.

    Raises:
        DataError: labels name images that are not there, images have no label (unless
            `ignore_unlabelled`), only one class is present, or the table breaks the format.
    """
    cfg = FolderConfig(format=fmt, malignant=malignant)  # type: ignore[arg-type]
    table, _ = parse_labels(raw, cfg, csv, VALIDATE)
    table["image_id"] = table["image_id"].astype("string").str.strip().str.replace(r"\.(jpe?g|png)$", "",
                                                                                    regex=True)
    by_patient = "patient_id" in table.columns and table["patient_id"].notna().any()
    table = canonical_table(table.rename(columns=RENAMES).drop(columns=["image_file"], errors="ignore"), "external",
                            csv, folds=VALIDATE.folds)
    have = set(image_ids)
    missing = [i for i in table["image_id"] if i not in have]
    if missing:
        raise DataError(f"{csv}: {len(missing)} of {len(table)} labelled images are not among --images: "
                        f"{missing[:LIST_MAX]}{' ...' if len(missing) > LIST_MAX else ''}; point --images at the "
                        "folder (or HDF5 file) that holds them, or remove their rows from the labels CSV")
    labelled = set(table["image_id"])
    unlabelled = [i for i in image_ids if i not in labelled]
    if unlabelled and not ignore_unlabelled:
        raise DataError(f"{len(unlabelled)} of {len(image_ids)} images under --images have no row in {csv}: "
                        f"{unlabelled[:LIST_MAX]}{' ...' if len(unlabelled) > LIST_MAX else ''}; add their labels, "
                        "or pass --ignore-unlabelled to score only the labelled ones (the others are listed in "
                        "the report)")
    counts = table["target"].value_counts()
    if len(counts) < 2:
        only = int(counts.index[0])
        raise DataError(f"{csv}: all {len(table)} images have target={only}; validation needs both benign (0) "
                        "and malignant (1) images: ROC-AUC, sensitivity and specificity are undefined otherwise")
    return LabelledSet(table, csv, bool(by_patient), unlabelled)


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

    Every thresholded figure (sensitivity, specificity, the confusion matrix, precision, F1, their
    intervals, the subgroups, the gallery) takes each row at its own model's threshold: the
    model's, or the image-only fallback's for the images it scored. When the fallback scored some
    images, "by_model" also gives each model's figures on its own images.

    `target_sensitivity` also picks a local threshold (the highest reaching it here) and reports
    the operating point there; that figure is fitted on this set, so it is optimistic for it.
    """
    table = labelled.table.set_index("image_id")
    pred = predictions.set_index("image_id").loc[table.index]
    scored = pred["status"].eq("ok").to_numpy()
    y_all = table["target"].to_numpy().astype(int)
    y, p = y_all[scored], pred["probability"].to_numpy(float)[scored]
    row_threshold = pred["threshold"].to_numpy(float)[scored]  # each row's own model's threshold
    used = pred["model"].to_numpy()[scored]
    groups = table["patient_id"].to_numpy()[scored] if labelled.by_patient else table.index.to_numpy()[scored]
    man = model.manifest
    threshold = float(man["threshold"])
    m = classification_metrics(y, p, row_threshold)
    ci = bootstrap_intervals(y, p, groups, row_threshold, n_boot, seed=seed)
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
        "subgroups": subgroup_table(table[scored].reset_index().drop(columns="source", errors="ignore"), p,
                                    row_threshold),
    }
    if len(set(used)) > 1:
        result["by_model"] = _by_model(y, p, row_threshold, used)
        result["thresholds_note"] = ("the image-only fallback scored the images without metadata: every "
                                     "thresholded figure takes each image at its own model's threshold, and "
                                     "by_model gives each model's figures on its own images")
    if target_sensitivity is not None:
        result["local_threshold"] = _local_thresholds(y, p, pred.loc[scored, "model"].to_numpy(), man["model"],
                                                      target_sensitivity)
    return result


def _by_model(y: np.ndarray, p: np.ndarray, threshold: np.ndarray, used: np.ndarray) -> dict[str, dict[str, Any]]:
    """Each model's figures on the images it scored, at its threshold."""
    out = {}
    for name in sorted(set(used)):
        rows = used == name
        m = classification_metrics(y[rows], p[rows], float(threshold[rows][0]))
        out[str(name)] = {"n_images": int(rows.sum()), "n_malignant": int(y[rows].sum()),
                          **{k: m[k] for k in ("threshold", "roc_auc", "recall", "specificity", "confusion_matrix")}}
    return out


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


def gallery(store: ImageStore, predictions: pd.DataFrame, table: pd.DataFrame, limit: int = 16, side: int = 128) -> dict:
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


@dataclass
class Validation:
    """What `score_labelled` returns: the figures (validation.json), one row per labelled image
    (predictions.csv: lesion predict's columns plus target) and the HTML report."""

    result: dict[str, Any]
    predictions: pd.DataFrame
    report: str


def score_labelled(model: FinalModel, inputs: Inputs, labelled: LabelledSet, device: torch.device | str = "cpu",
                   batch_size: int = 64, tta: bool = False, workers: int = 0, n_boot: int = 1000,
                   target_sensitivity: float | None = None) -> Validation:
    """Score the labelled images of `inputs` (those of `labelled.table`; an unreadable image is
    reported, not scored) and figure them: `validate_external`, plus `tta` in the result, the
    gallery and the report. `inputs` is not modified; its store stays open (the caller's)."""
    keep = set(labelled.table["image_id"])
    features = inputs.features
    if features is not None:
        features = features.loc[[i for i in features.index if i in keep]]
    inputs = dataclasses.replace(inputs, image_ids=[i for i in inputs.image_ids if i in keep], features=features)
    pred = predict_cases(model, inputs, device, batch_size, tta, workers, skip_bad=True)
    res = validate_external(model, labelled, pred, n_boot, target_sensitivity=target_sensitivity)
    res["tta"] = tta
    table = labelled.table
    ok = pred.set_index("image_id").loc[table["image_id"], "status"].eq("ok").to_numpy()
    y = table["target"].to_numpy().astype(int)[ok]
    p = pred.set_index("image_id").loc[table["image_id"], "probability"].to_numpy(float)[ok]
    report = build_validation_report(res, y, p, gallery(inputs.store, pred, table))
    return Validation(res, pred.merge(table[["image_id", "target"]], on="image_id", how="left"), report)


def recalibrated(manifest: dict[str, Any], card: str, res: dict[str, Any], labels: Path) -> tuple[dict[str, Any], str]:
    """The manifest and model card of a copy of the model with the local threshold of
    `res["local_threshold"]` (and the image-only fallback's, when it scored the set) recorded;
    `labels` names the labels CSV it was chosen on. `manifest` is not modified."""
    man = copy.deepcopy(manifest)
    lt = res["local_threshold"]
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
    return man, card


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
