"""Building the exported model: the catalogue's chosen model retrained on every labelled row,
with its preprocessing, calibration, threshold and model card (written by `bundle.write_bundle`).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from lesion_ml.catalogue import GBDT, ModelRef, cnn_ref, find
from lesion_ml.config import (CnnModelConfig, EvaluateConfig, FinalConfig, PrepareConfig, TrainCnnConfig,
                               TrainGbdtConfig, to_plain)
from lesion_ml.data.images import open_store
from lesion_ml.errors import ConfigError
from lesion_ml.evaluate.combine import Calibrator, combiner
from lesion_ml.evaluate.compare import calibration_method, threshold_rule
from lesion_ml.image.data import fold_data, fold_meta
from lesion_ml.image.inference import select_device, use_threads
from lesion_ml.image.train import train_fold
from lesion_ml.io import weights_bytes
from lesion_ml.model.card import model_card
from lesion_ml.tabular.export import export_preprocessor
from lesion_ml.tabular.gbdt import fit_gbdt
from lesion_ml.tabular.prepare import fit_transform_fold

log = logging.getLogger("lesion_ml.model.card")


class FinalSections(BaseModel):
    """The params.yaml sections the final model is built from (the final stage's params)."""

    model_config = ConfigDict(frozen=True)

    final: FinalConfig
    prepare: PrepareConfig
    train_gbdt: TrainGbdtConfig
    train_cnn: TrainCnnConfig
    evaluate: EvaluateConfig


@dataclass
class Bundle:
    """A model folder's contents before writing: the manifest, its files and MODEL_CARD.md."""

    manifest: dict
    files: dict[str, bytes | str]
    card: str


def choose_model(p: FinalSections, metrics: dict) -> ModelRef:
    """The model params.yaml final.model names (default: evaluate's best), from the catalogue."""
    name = metrics["best_model"] if p.final.model == "best" else p.final.model
    if name not in metrics["models"]:
        raise ConfigError(f"params.yaml final.model is {p.final.model!r}, but reports/metrics.json has no model "
                          f"{name!r}; have {sorted(metrics['models'])}")
    return find(name, p.train_cnn.models)


def fallback_model(p: FinalSections) -> ModelRef | None:
    """The image-only model params.yaml final.fallback names, scoring images without metadata."""
    fb = p.final.fallback
    if fb is None:
        return None
    if fb not in p.train_cnn.models or p.train_cnn.models[fb].fusion.enabled:
        image_only = [n for n, c in p.train_cnn.models.items() if not c.fusion.enabled]
        raise ConfigError(f"params.yaml final.fallback is {fb!r}; it must be an image-only model of "
                          f"train_cnn.models: {image_only} (or null)")
    return cnn_ref(fb, p.train_cnn.models[fb])


def retrain_cnn(cfg: CnnModelConfig, run: TrainCnnConfig, table: pd.DataFrame, *, seed: int, label: str,
                meta: np.ndarray | None = None, images: dict, minority_index: pd.DataFrame | None = None,
                minority_images: Path | None = None, checkpoint: Path | None = None) -> tuple[bytes, int]:
    """The image model `cfg` trained on every row of `table` (image_id, target, patient_id) with
    `run`'s device, threads and workers; (its state dict as safetensors bytes, number of metadata
    inputs). `meta`: with fusion, the metadata features of `table`'s rows; `images`: the image
    store's manifest; the minority set's index and HDF5 file when cfg uses it; `checkpoint`: the
    resumable training state."""
    use_threads(run.threads)
    data = fold_data(table, np.ones(len(table), bool), cfg, meta=meta, minority_index=minority_index,
                     minority_source=str(minority_images.parent) if minority_images else "the minority set")
    with open_store(images, minority_images if cfg.balance.minority_set else None) as store:
        result = train_fold(store, data, cfg, select_device(run.device), run.num_workers, seed=seed,
                            checkpoint=checkpoint, label=label, checkpoint_every_s=run.checkpoint_every_s)
    return weights_bytes(result.model.state_dict()), int(data.train_meta.shape[1]) if cfg.fusion.enabled else 0


def _metadata_models(p: FinalSections, ref: ModelRef, feats: pd.DataFrame, y: np.ndarray, manifest: dict,
                     files: dict) -> pd.DataFrame | None:
    """The preprocessing fitted on every row and, when `ref` uses it, the metadata model (into
    `manifest` and `files`); the preprocessed features, or None when `ref` needs no metadata."""
    if not ref.needs_metadata:
        return None
    X, names, pipe = fit_transform_fold(feats, pd.Series(y), np.ones(len(y), bool), p.prepare)  # noqa: N806
    files["preprocess.json"] = json.dumps(export_preprocessor(pipe, names, p.prepare.features), indent=1)
    manifest.update(preprocess="preprocess.json", preprocess_features=names)
    if GBDT in ref.components:
        model = fit_gbdt(X, y, p.train_gbdt)
        manifest[GBDT] = {"files": [f"{GBDT}_seed{s}.txt" for s in p.train_gbdt.seeds], "columns": list(X.columns)}
        for s, m in zip(p.train_gbdt.seeds, model.models):
            files[f"{GBDT}_seed{s}.txt"] = m.booster_.model_to_string()
    return X


def combination(p: FinalSections, ref: ModelRef, scores: pd.DataFrame, y: np.ndarray, X: pd.DataFrame | None,  # noqa: N803
                files: dict) -> dict | None:
    """How `ref` combines its components' scores, fitted on every row: evaluate's estimator
    (lesion_ml.evaluate.combine) on the components' out-of-fold scores `scores` (raw columns), as
    JSON; a stack's LightGBM models go into `files`. None for a single model."""
    if ref.combine == "single":
        return None
    parts = pd.DataFrame({c: scores[find(c, p.train_cnn.models).raw].to_numpy() for c in ref.components})
    spec = combiner(ref.combine, ref.components, p.train_gbdt).fit(parts, y, X).to_json()
    if ref.combine == "stack":
        spec["files"] = [f"stack_seed{s}.txt" for s in p.train_gbdt.seeds]
        files.update(zip(spec["files"], spec.pop("models")))
    return spec


def _fold_averages(p: FinalSections, keys: list[str], fold_weights: Mapping[str, list[Path]], files: dict,
                   manifest: dict) -> None:
    """Each image model of `keys` exported as the mean logit of its fold models (their weight files
    copied into the bundle), nothing trained.

    Raises:
        ConfigError: a fusion model (each fold's model reads that fold's selected features), or no
            fold weights for a model.
    """
    for key in keys:
        cfg = p.train_cnn.models[key]
        if cfg.fusion.enabled:
            raise ConfigError(f"params.yaml final.image_models: fold_average cannot export train_cnn.models.{key}: "
                              "it uses metadata (fusion.enabled), and each fold's model reads the features selected "
                              "in its own fold; set final.image_models: retrain, or export an image-only model")
        paths = list(fold_weights.get(key, []))
        if not paths:
            raise ConfigError(f"params.yaml final.image_models: fold_average: no fold weights of "
                              f"train_cnn.models.{key}; run its train_cnn stage first (dvc repro)")
        name = cnn_ref(key, cfg).name
        names = [f"{name}_fold{k}.safetensors" for k in range(len(paths))]
        files.update({n: Path(path).read_bytes() for n, path in zip(names, paths)})
        manifest["cnn"][name] = {"weights": names, "config": to_plain(cfg), "n_meta": 0,
                                 "members": "the mean logit of the cross-validation fold models"}
        log.info("final %s: the mean of its %d fold models (final.image_models: fold_average)", key, len(paths))


def operating_point(ref: ModelRef, cfg: EvaluateConfig, m: dict, oof: pd.DataFrame) -> dict:
    """The exported calibration and threshold of `ref`: the calibrator fitted on every out-of-fold
    row (rows in evaluate's order: `oof` is its score table), and the threshold evaluate chose on
    those calibrated scores (`model_scores`' decision scores), so that on the out-of-fold rows they
    give the sensitivity and specificity that `m` (its reports/metrics.json entry) reports."""
    cal = Calibrator(calibration_method(ref, cfg)).fit(oof["target"].to_numpy().astype(int), oof[ref.raw].to_numpy())
    return {"calibration": cal.to_json(), "threshold": m["threshold"]}


def build_bundle(p: FinalSections, *, metrics: dict, detail: dict, scores: pd.DataFrame, table: pd.DataFrame,
                 feats: pd.DataFrame, images: dict, minority_index: pd.DataFrame | None = None,
                 minority_images: Path | None = None, checkpoints: Mapping[str, Path] | None = None,
                 fold_weights: Mapping[str, list[Path]] | None = None) -> Bundle:
    """Retrain the chosen model (`choose_model`) and its image-only fallback on every row (with
    `final.image_models: fold_average`, its image models are the mean of their fold models instead).

    Args:
        metrics, detail: reports/metrics.json and reports/evaluation.json.
        scores: evaluate's out-of-fold scores by image_id, in its row order (raw ones: calibration,
            stack, ranks).
        table: the lesion table; `feats`: the cleaned metadata, one row per image of `table`.
        images: the image store's manifest; minority_index, minority_images: the minority set
            (for image models that use it).
        checkpoints: the resumable checkpoint of each retrained image model, by train_cnn.models key.
        fold_weights: each image model's fold weights (safetensors), fold 0 first, by train_cnn.models
            key; read with `final.image_models: fold_average`.
    """
    ref, fb = choose_model(p, metrics), fallback_model(p)
    oof = scores
    feats = feats.set_index("image_id").loc[table["image_id"]].reset_index()
    ids, y = feats.pop("image_id"), feats.pop("target").to_numpy().astype(int)
    scores = scores.loc[ids]
    files: dict[str, bytes | str] = {}
    manifest: dict = {"model": ref.name, "combine": ref.combine, "components": list(ref.components),
                      "select_metric": metrics.get("select_metric", "roc_auc"), "needs_metadata": ref.needs_metadata,
                      "selection": _selection(p, metrics), "cnn": {}}
    X = _metadata_models(p, ref, feats, y, manifest, files)  # noqa: N806
    manifest["combiner"] = combination(p, ref, scores, y, X, files)
    cnn_table = table[["image_id", "target", "patient_id"]].reset_index(drop=True)
    meta = fold_meta(X.assign(image_id=ids.to_numpy()), cnn_table["image_id"]) if X is not None else None
    keys = sorted(set(ref.cnns) | (set(fb.cnns) if fb else set()))
    if p.final.image_models == "fold_average":
        _fold_averages(p, keys, fold_weights or {}, files, manifest)
    else:
        for key in keys:
            cfg = p.train_cnn.models[key]
            weights, n_meta = retrain_cnn(cfg, p.train_cnn, cnn_table, seed=cfg.seed + p.final.seed_offset,
                                          label=f"final {key}", meta=meta if cfg.fusion.enabled else None,
                                          images=images, minority_index=minority_index,
                                          minority_images=minority_images,
                                          checkpoint=(checkpoints or {}).get(key))
            name = cnn_ref(key, p.train_cnn.models[key]).name
            files[f"{name}.safetensors"] = weights
            manifest["cnn"][name] = {"weights": f"{name}.safetensors", "config": to_plain(p.train_cnn.models[key]),
                                     "n_meta": n_meta}
    m = metrics["models"][ref.name]
    manifest.update(operating_point(ref, p.evaluate, m, oof), threshold_rule=threshold_rule(p.evaluate), metrics=m,
                    inputs="the lesion image and its metadata" if ref.needs_metadata else "the lesion image alone")
    if fb:
        fm = metrics["models"][fb.name]
        manifest["fallback"] = {"component": fb.name, **operating_point(fb, p.evaluate, fm, oof),
                                "metrics": {k: fm[k] for k in ("roc_auc", "pauc_80", "recall", "specificity")}}
    data = {"source": ", ".join(sorted(table["source"].astype(str).unique())), "n_images": len(table),
            "n_malignant": int(y.sum()), "n_patients": int(table["patient_id"].nunique()),
            "n_folds": len(m.get("fold_roc_auc", {}))}
    manifest["training_data"] = data
    subgroups = detail.get(ref.name, {}).get("subgroups", [])
    log.info("final model %s (%s of %s)", ref.name, ref.combine, ", ".join(ref.components))
    return Bundle(manifest, files, model_card(manifest, data, subgroups))


def _selection(p: FinalSections, metrics: dict) -> dict:
    """Why this model: evaluate's choice (metrics.json "selection") or params.yaml final.model."""
    if p.final.model != "best":
        return {"chosen": p.final.model, "rule": "named in params.yaml final.model"}
    return metrics.get("selection") or {"chosen": metrics["best_model"], "rule": f"highest {metrics['select_metric']}"}
