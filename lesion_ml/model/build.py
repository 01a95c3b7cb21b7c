"""Building the exported model: the catalogue's chosen model retrained on every labelled row,
with its preprocessing, calibration, threshold and model card (written by `bundle.write_bundle`).
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lesion_ml.catalogue import GBDT, ModelRef, cnn_ref, find
from lesion_ml.config import Params, to_plain
from lesion_ml.data.images import open_store
from lesion_ml.data.split import fold_data
from lesion_ml.errors import ConfigError
from lesion_ml.evaluate.calibration import fit_calibrator
from lesion_ml.evaluate.compare import threshold_rule
from lesion_ml.image.inference import select_device, use_threads
from lesion_ml.image.train import train_fold
from lesion_ml.model.bundle import rank_reference
from lesion_ml.model.card import model_card
from lesion_ml.tabular.export import export_preprocessor
from lesion_ml.tabular.gbdt import fit_gbdt
from lesion_ml.tabular.prepare import fit_transform_fold

log = logging.getLogger("lesion_ml.model.card")


@dataclass
class Bundle:
    """A model folder's contents before writing: the manifest, its files and MODEL_CARD.md."""

    manifest: dict
    files: dict[str, bytes | str]
    card: str


def choose_model(p: Params, metrics: dict) -> ModelRef:
    """The model params.yaml final.model names (default: evaluate's best), from the catalogue."""
    name = metrics["best_model"] if p.final.model == "best" else p.final.model
    if name not in metrics["models"]:
        raise ConfigError(f"params.yaml final.model is {p.final.model!r}, but reports/metrics.json has no model "
                          f"{name!r}; have {sorted(metrics['models'])}")
    return find(name, p.train_cnn.models)


def fallback_model(p: Params) -> ModelRef | None:
    """The image-only model params.yaml final.fallback names, scoring images without metadata."""
    fb = p.final.fallback
    if fb is None:
        return None
    if fb not in p.train_cnn.models or p.train_cnn.models[fb].fusion.enabled:
        image_only = [n for n, c in p.train_cnn.models.items() if not c.fusion.enabled]
        raise ConfigError(f"params.yaml final.fallback is {fb!r}; it must be an image-only model of "
                          f"train_cnn.models: {image_only} (or null)")
    return cnn_ref(fb, p.train_cnn.models[fb])


def retrain_cnn(p: Params, key: str, table: pd.DataFrame, features: pd.DataFrame | None, images: dict,
                minority: Path, checkpoints: Path) -> tuple[bytes, int]:
    """Image model train_cnn.models.<key> trained on every row of `table`; (its state dict as
    bytes, number of metadata inputs). `images` is the image store's manifest."""
    cfg = p.train_cnn.models[key]
    use_threads(p.train_cnn.threads)
    data = fold_data(table, np.ones(len(table), bool), cfg, features, minority)
    data.valid_y = None
    with open_store(images, minority / "images.hdf5" if cfg.balance.minority_set else None) as store:
        result = train_fold(store, data, cfg, select_device(p.train_cnn.device), p.train_cnn.num_workers,
                            seed=cfg.seed + p.final.seed_offset, checkpoint=checkpoints / f"{key}.pt",
                            label=f"final {key}")
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, buf)
    return buf.getvalue(), int(data.train_meta.shape[1]) if cfg.fusion.enabled else 0


def _metadata_models(p: Params, ref: ModelRef, feats: pd.DataFrame, y: np.ndarray, scores: pd.DataFrame,
                     manifest: dict, files: dict) -> pd.DataFrame | None:
    """The preprocessing fitted on every row, the metadata model and the stack, as `ref` needs
    them (into `manifest` and `files`); the preprocessed features, or None without metadata."""
    if not ref.needs_metadata:
        return None
    X, names, pipe = fit_transform_fold(feats, pd.Series(y), np.ones(len(y), bool), p.prepare)  # noqa: N806
    files["preprocess.json"] = json.dumps(export_preprocessor(pipe, names, p.prepare.features), indent=1)
    manifest.update(preprocess="preprocess.json", preprocess_features=names)
    boosted = {GBDT: X} if GBDT in ref.components else {}
    if ref.combine == "stack":
        boosted["stack"] = X.copy()
        for c in ref.components:
            boosted["stack"][f"score_{c}"] = scores[find(c, p.train_cnn.models).raw].to_numpy()
    for part, Xb in boosted.items():  # noqa: N806
        model = fit_gbdt(Xb, y, p.train_gbdt)
        manifest[part] = {"files": [f"{part}_seed{s}.txt" for s in p.train_gbdt.seeds], "columns": list(Xb.columns)}
        for s, m in zip(p.train_gbdt.seeds, model.models):
            files[f"{part}_seed{s}.txt"] = m.booster_.model_to_string()
    return X


def build_bundle(p: Params, metrics: dict, detail: dict, scores: pd.DataFrame, table: pd.DataFrame,
                 feats: pd.DataFrame, images: dict, minority: Path, checkpoints: Path) -> Bundle:
    """Retrain the chosen model (`choose_model`) and its image-only fallback on every row.

    Args:
        metrics, detail: reports/metrics.json and reports/evaluation.json.
        scores: evaluate's out-of-fold scores by image_id (raw ones: calibration, stack, ranks).
        table: the lesion table; `feats`: the cleaned metadata, one row per image of `table`.
        images: the image store's manifest; minority: the minority-set folder.
        checkpoints: where the retraining keeps its resumable checkpoints.
    """
    ref, fb = choose_model(p, metrics), fallback_model(p)
    feats = feats.set_index("image_id").loc[table["image_id"]].reset_index()
    ids, y = feats.pop("image_id"), feats.pop("target").to_numpy().astype(int)
    scores = scores.loc[ids]
    files: dict[str, bytes | str] = {}
    manifest: dict = {"model": ref.name, "combine": ref.combine, "components": list(ref.components),
                      "select_metric": metrics.get("select_metric", "roc_auc"), "needs_metadata": ref.needs_metadata,
                      "cnn": {}}
    X = _metadata_models(p, ref, feats, y, scores, manifest, files)  # noqa: N806
    cnn_table = table[["image_id", "target", "patient_id"]].reset_index(drop=True)
    meta_table = X.assign(image_id=ids.to_numpy()) if X is not None else None
    for key in sorted(set(ref.cnns) | (set(fb.cnns) if fb else set())):
        weights, n_meta = retrain_cnn(p, key, cnn_table, meta_table, images, minority, checkpoints)
        name = cnn_ref(key, p.train_cnn.models[key]).name
        files[f"{name}.pt"] = weights
        manifest["cnn"][name] = {"weights": f"{name}.pt", "config": to_plain(p.train_cnn.models[key]), "n_meta": n_meta}
    if ref.combine == "rank":
        manifest["rank_reference"] = {c: rank_reference(scores[find(c, p.train_cnn.models).raw]) for c in ref.components}
    m = metrics["models"][ref.name]
    manifest.update(calibration=fit_calibrator(p.evaluate.calibrate if ref.is_probability else "none", y,
                                               scores[ref.raw].to_numpy()),
                    threshold=m["threshold"], threshold_rule=threshold_rule(p.evaluate), metrics=m,
                    inputs="the lesion image and its metadata" if ref.needs_metadata else "the lesion image alone")
    if fb:
        fm = metrics["models"][fb.name]
        manifest["fallback"] = {"component": fb.name, "threshold": fm["threshold"],
                                "calibration": fit_calibrator(p.evaluate.calibrate, y, scores[fb.raw]),
                                "metrics": {k: fm[k] for k in ("roc_auc", "pauc_80", "recall", "specificity")}}
    data = {"source": ", ".join(sorted(table["source"].astype(str).unique())), "n_images": len(table),
            "n_malignant": int(y.sum()), "n_patients": int(table["patient_id"].nunique()),
            "n_folds": len(m.get("fold_roc_auc", {}))}
    manifest["training_data"] = data
    subgroups = detail.get(ref.name, {}).get("subgroups", [])
    log.info("final model %s (%s of %s)", ref.name, ref.combine, ", ".join(ref.components))
    return Bundle(manifest, files, model_card(manifest, data, subgroups))
