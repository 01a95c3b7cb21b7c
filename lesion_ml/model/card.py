"""The final model: which one, and its model card.

The final model is the evaluated model chosen in params (`final.model`: "best" takes
evaluate's best_model by `evaluate.select_metric`), retrained on every labelled row with the
same params, preprocessing refitted on all rows. Its threshold and the metrics in its card are
the out-of-fold ones of the evaluated model of the same recipe: the exported weights themselves
were never scored on held-out data (no rows are left), which the card says.
"""
from __future__ import annotations

from typing import Any

METRIC_ROWS = (("roc_auc", "ROC-AUC"), ("pauc_80", "partial AUC above 80% TPR (0..0.2)"), ("pr_auc", "PR-AUC"),
               ("recall", "sensitivity"), ("specificity", "specificity"), ("precision", "precision (PPV)"),
               ("f1", "F1"), ("balanced_accuracy", "balanced accuracy"), ("accuracy", "accuracy"))
CI_KEYS = {"roc_auc": "roc_auc", "pauc_80": "pauc_80", "pr_auc": "pr_auc", "recall": "sensitivity",
           "specificity": "specificity"}
INTENDED_USE = ("", "## Intended use", "",
                "Research and decision support in studies of skin-lesion triage: ranking lesions for a "
                "dermatologist's attention and measuring what a model of this kind can do on data like its "
                "training data. It is not a medical device, is not approved for diagnosis, and must not be the "
                "only basis of a clinical decision.", "",
                "## Limitations", "")


def _fmt(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def model_card(manifest: dict[str, Any], data: dict[str, Any], subgroups: list[dict[str, Any]]) -> str:
    """MODEL_CARD.md text for a bundle.

    Args:
        manifest: the bundle manifest (model, components, threshold, metrics, calibration, ...).
        data: counts of the training data: source, n_images, n_malignant, n_patients, n_folds.
        subgroups: evaluate's per-subgroup rows for this model (out of fold).
    """
    m = manifest["metrics"]
    ci = m.get("ci95", {})
    lines = (_what_it_is(manifest) + _training_data(data) + _metrics_table(m, ci) + _subgroups_section(subgroups)
             + list(INTENDED_USE) + [f"- {t}" for t in _limitations(manifest, data)])
    return "\n".join(lines) + "\n"


def _what_it_is(manifest: dict[str, Any]) -> list[str]:
    """The card's title and "What it is" section: task, recipe, decision rule, calibration, the
    image models, the metadata features and the image-only fallback."""
    lines = [f"# Model card: {manifest['model']}", "",
             "## What it is", "",
             f"- Task: probability that a skin lesion is malignant, from {manifest['inputs']}.",
             f"- Recipe: `{manifest['model']}` ({manifest['combine']} of {', '.join(manifest['components'])}), "
             + ("its image models the mean of their fold models" if _fold_averaged(manifest) else
                "retrained on every labelled row") + " after the out-of-fold comparison chose it "
             f"(params.yaml evaluate.select_metric: {manifest['select_metric']}).",
             f"- Decision: malignant when the probability is at least **{manifest['threshold']:.6g}** "
             f"({manifest['threshold_rule']}, chosen on the out-of-fold scores).",
             f"- Calibration: {manifest['calibration']['method'] if manifest.get('calibration') else 'none'}.",
             ] + _selection_lines(manifest.get("selection") or {}, manifest["model"])
    for name, spec in manifest.get("cnn", {}).items():
        lines.append(_image_model_line(name, spec))
    if manifest.get("preprocess_features"):
        lines.append(f"- Metadata features ({len(manifest['preprocess_features'])}): "
                     + ", ".join(f"`{f}`" for f in manifest["preprocess_features"]) + ".")
    fb = manifest.get("fallback")
    if fb:
        lines.append(f"- Image-only fallback: `{fb['component']}` (threshold {fb['threshold']:.6g}) scores images "
                     "that have no metadata; such rows are marked in the predictions.")
    return lines


def _selection_lines(sel: dict[str, Any], name: str) -> list[str]:
    """Why this model was chosen: the rule, and the margin to the model with the best figure."""
    if not sel.get("rule"):
        return []
    lines = [f"- Choice: {sel['rule']}."]
    leader, margin = sel.get("leader"), sel.get("margin")
    if leader and margin and sel.get("runner_up"):
        lo, hi = margin["ci95"]
        ahead = (f"`{leader}` had the highest out-of-fold {sel['metric']}, ahead of `{sel['runner_up']}` by "
                 f"{_fmt(margin['difference'])} (95% paired patient-bootstrap interval {_fmt(lo)} to {_fmt(hi)})")
        lines.append(f"- {ahead}: " + ("within the noise, so the simpler model was chosen." if leader != name
                                       else "chosen."))
    return lines


def _fold_averaged(manifest: dict[str, Any]) -> bool:
    return any(isinstance(spec["weights"], list) for spec in manifest.get("cnn", {}).values())


def _image_model_line(name: str, spec: dict[str, Any]) -> str:
    """One image model of the bundle: backbone, input size, epochs and whether it fuses metadata."""
    cfg = spec["config"]
    constancy = ", Shades of Grey colour constancy" if cfg.get("colour_constancy", "none") != "none" else ""
    members = (f"; the mean logit of its {len(spec['weights'])} cross-validation fold models, not retrained "
               "(final.image_models: fold_average), so the out-of-fold figures and threshold are those of the "
               "exported networks" if isinstance(spec["weights"], list) else "")
    return (f"- Image model `{name}`: {cfg['backbone']} at {cfg['image_size']} px ({cfg['resize']}{constancy}), "
            f"{cfg['epochs']} epochs, " + (f"fusion with {spec['n_meta']} metadata features"
                                            if spec["n_meta"] else "image only") + members + ".")


def _training_data(data: dict[str, Any]) -> list[str]:
    """The "Training data" section: source, counts and how the evaluation was grouped."""
    return ["", "## Training data", "",
            f"- Source: {data['source']}; {data['n_images']} images, {data['n_malignant']} malignant "
            f"({data['n_malignant'] / max(data['n_images'], 1):.2%}), {data['n_patients']} patients.",
            f"- Evaluation: {data['n_folds']}-fold cross-validation grouped by patient (no patient in both "
            "training and validation rows); every number below is out of fold."]


def _metrics_table(m: dict[str, Any], ci: dict[str, Any]) -> list[str]:
    """The out-of-fold metrics `m` with their bootstrap intervals `ci`, then the confusion matrix,
    calibration and per-fold ROC-AUC line."""
    lines = ["", "## Out-of-fold metrics (95% patient-level bootstrap intervals)", "",
             "| metric | value | 95% interval |", "|---|---|---|"]
    for key, label in METRIC_ROWS:
        interval = ci.get(CI_KEYS.get(key, ""), None)
        lines.append(f"| {label} | {_fmt(m.get(key))} | "
                     + (f"{_fmt(interval[0], 3)} to {_fmt(interval[1], 3)}" if interval else "") + " |")
    tn, fp = m["confusion_matrix"][0]
    fn, tp = m["confusion_matrix"][1]
    cal = m.get("calibration", {})
    return lines + ["", f"Confusion matrix at the threshold: {tp} true positives, {fn} missed cancers, {fp} false "
                    f"alarms, {tn} true negatives. Calibration: ECE {_fmt(cal.get('ece'))}, Brier "
                    f"{_fmt(cal.get('brier'))}. Per-fold ROC-AUC: "
                    + ", ".join(_fmt(v, 3) for v in m.get("fold_roc_auc", {}).values()) + "."]


def _subgroups_section(subgroups: list[dict[str, Any]]) -> list[str]:
    """The per-subgroup table (out of fold, at the threshold), or why there is none."""
    lines = ["", "## Subgroups (out of fold, at the threshold)", ""]
    if not subgroups:
        return lines + ["The data has no sex, age, site or source columns with groups of 10 or more images."]
    lines += ["| attribute | group | images | malignant | ROC-AUC | sensitivity | specificity |",
              "|---|---|---|---|---|---|---|"]
    return lines + [f"| {g['attribute']} | {g['group']} | {g['n']} | {g['n_malignant']} | {_fmt(g['roc_auc'], 3)} | "
                    f"{_fmt(g['sensitivity'], 3)} | {_fmt(g['specificity'], 3)} |" for g in subgroups]


def _limitations(manifest: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """The limitations that apply to this bundle: the general ones, plus those of synthetic
    training data, patient-relative features, a rank ensemble and few malignant images."""
    limits = [
        "The threshold was chosen on the same out-of-fold scores that the metrics above are computed on, so "
        "the sensitivity at the threshold is optimistic; expect less on new data.",
        "The exported weights were trained on all rows, so no held-out score of these exact weights exists; the "
        "metrics describe the recipe, measured fold by fold.",
        "Images from other cameras, skin types, body sites or populations than the training data can score "
        "very differently; check calibration and subgroups on local data before use.",
    ]
    if data["source"] == "synthetic":
        limits.insert(0, "TRAINED ON GENERATED DEMO DATA: the images and metadata are synthetic. This model says "
                         "nothing about real lesions; it exists to show the pipeline end to end.")
    if any(f.startswith(("pr_", "fe_patient")) for f in manifest.get("preprocess_features", [])):
        limits.append("Patient-relative features compare a lesion with the patient's other lesions in the same "
                      "prediction input: give all of a patient's lesions together, with patient_id.")
    if manifest["combine"] == "rank":
        limits.append("The rank ensemble places each score among the training out-of-fold scores of its "
                      "component; retrained components can shift those positions.")
    if data["n_malignant"] < 100:
        limits.append(f"Only {data['n_malignant']} malignant training images: the intervals above are wide and "
                      "rare presentations are unlikely to be covered.")
    return limits
