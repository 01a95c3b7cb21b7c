"""Task of the final stage: retrain the chosen model on every labelled row and export the bundle."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lesion_ml.bundle import components_of, fit_calibrator, rank_reference, write_bundle
from lesion_ml.config import ConfigError, Params, to_plain
from lesion_ml.data.images import ImageStore, MultiStore
from lesion_ml.final import model_card
from lesion_ml.models.gbdt import fit_gbdt
from lesion_ml.tabular.export import export_preprocessor
from lesion_ml.tabular.prepare import fit_transform_fold
from lesion_ml.train import select_device, train_fold
from tasks.cache import cached_task
from tasks.train import _fold_data

log = logging.getLogger("lesion_ml.final")


def _choose(p: Params, metrics: dict) -> str:
    name = metrics["best_model"] if p.final.model == "best" else p.final.model
    if name not in metrics["models"]:
        raise ConfigError(f"params.yaml final.model is {p.final.model!r}, but reports/metrics.json has no model "
                          f"{name!r}; have {sorted(metrics['models'])}")
    return name


def _train_cnn(p: Params, name: str, table: pd.DataFrame, features: pd.DataFrame | None, images: Path,
               minority: Path, checkpoints: Path) -> tuple[bytes, int]:
    """One image model trained on every row; (its state dict as bytes, number of metadata inputs)."""
    cfg = p.train_cnn.models[name]
    store = ImageStore.from_manifest(json.loads(images.read_text()))
    if cfg.balance.minority_set:
        store = MultiStore([store, ImageStore(hdf5=minority / "images.hdf5")])
    data = _fold_data(table, np.ones(len(table), bool), cfg, features, minority)
    data.valid_y = None
    try:
        result = train_fold(store, data, cfg, select_device(p.train_cnn.device), p.train_cnn.num_workers,
                            seed=cfg.seed + p.final.seed_offset, checkpoint=checkpoints / f"{name}.pt",
                            label=f"final {name}")
    finally:
        for s in getattr(store, "stores", [store]):
            s.close()
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, buf)
    return buf.getvalue(), int(data.train_meta.shape[1]) if cfg.fusion.enabled else 0


@cached_task(outputs=('out', 'checkpoints'))
def export_final(p: Params, metrics_file: Path, detail_file: Path, scores_file: Path, lesions: Path, clean: Path,
                 images: Path, minority: Path, out: Path, checkpoints: Path) -> dict:
    """Retrain the model that params.yaml final.model names on all rows; write the bundle `out`."""
    metrics = json.loads(metrics_file.read_text())
    name = _choose(p, metrics)
    base = ["gbdt"] + [f"cnn_{n}" for n in p.train_cnn.models]
    combine, comps = components_of(name, base)
    fb = p.final.fallback
    if fb is not None and (fb not in p.train_cnn.models or p.train_cnn.models[fb].fusion.enabled):
        image_only = [n for n, c in p.train_cnn.models.items() if not c.fusion.enabled]
        raise ConfigError(f"params.yaml final.fallback is {fb!r}; it must be an image-only model of "
                          f"train_cnn.models: {image_only} (or null)")
    cnn_names = sorted({c[4:] for c in comps if c.startswith("cnn_")} | ({fb} if fb else set()))
    needs_meta = combine == "stack" or "gbdt" in comps or any(
        p.train_cnn.models[c[4:]].fusion.enabled for c in comps if c.startswith("cnn_"))

    table = pd.read_parquet(lesions)
    feats = pd.read_parquet(clean).set_index("image_id").loc[table["image_id"]].reset_index()
    ids, y = feats.pop("image_id"), feats.pop("target").to_numpy().astype(int)
    scores = pd.read_parquet(scores_file).set_index("image_id").loc[ids]
    files: dict[str, bytes | str] = {}
    manifest: dict = {"model": name, "combine": combine, "components": comps, "select_metric": metrics.get(
        "select_metric", "roc_auc"), "needs_metadata": needs_meta, "cnn": {}}
    X = None  # noqa: N806
    if needs_meta:
        X, names, pipe = fit_transform_fold(feats, pd.Series(y), np.ones(len(y), bool), p.prepare)  # noqa: N806
        files["preprocess.json"] = json.dumps(export_preprocessor(pipe, names, p.prepare.features), indent=1)
        manifest.update(preprocess="preprocess.json", preprocess_features=names)
    if "gbdt" in comps:
        model = fit_gbdt(X, y, p.train_gbdt)
        manifest["gbdt"] = {"files": [f"gbdt_seed{s}.txt" for s in p.train_gbdt.seeds], "columns": list(X.columns)}
        for s, m in zip(p.train_gbdt.seeds, model.models):
            files[f"gbdt_seed{s}.txt"] = m.booster_.model_to_string()
    cnn_table = table[["image_id", "target", "patient_id"]].reset_index(drop=True)
    meta_table = X.assign(image_id=ids.to_numpy()) if X is not None else None
    for n in cnn_names:
        weights, n_meta = _train_cnn(p, n, cnn_table, meta_table, images, minority, checkpoints)
        files[f"cnn_{n}.pt"] = weights
        manifest["cnn"][f"cnn_{n}"] = {"weights": f"cnn_{n}.pt", "config": to_plain(p.train_cnn.models[n]),
                                       "n_meta": n_meta}
    if combine == "stack":
        Xs = X.copy()  # noqa: N806
        for c in comps:
            Xs[f"score_{c}"] = scores[f"{c}__raw"].to_numpy()
        stack = fit_gbdt(Xs, y, p.train_gbdt)
        manifest["stack"] = {"files": [f"stack_seed{s}.txt" for s in p.train_gbdt.seeds], "columns": list(Xs.columns)}
        for s, m in zip(p.train_gbdt.seeds, stack.models):
            files[f"stack_seed{s}.txt"] = m.booster_.model_to_string()
    if combine == "rank":
        manifest["rank_reference"] = {c: rank_reference(scores[f"{c}__raw"]) for c in comps}
    calibrate = p.evaluate.calibrate if combine != "rank" else "none"  # evaluate never calibrates ranks
    m = metrics["models"][name]
    manifest.update(calibration=fit_calibrator(calibrate, y, scores[f"{name}__raw"].to_numpy()),
                    threshold=m["threshold"], threshold_rule=_rule(p), metrics=m,
                    inputs="the lesion image and its metadata" if needs_meta else "the lesion image alone")
    if fb:
        fm = metrics["models"][f"cnn_{fb}"]
        manifest["fallback"] = {"component": f"cnn_{fb}", "threshold": fm["threshold"],
                                "calibration": fit_calibrator(p.evaluate.calibrate, y, scores[f"cnn_{fb}__raw"]),
                                "metrics": {k: fm[k] for k in ("roc_auc", "pauc_80", "recall", "specificity")}}
    data = {"source": ", ".join(sorted(table["source"].astype(str).unique())), "n_images": len(table),
            "n_malignant": int(y.sum()), "n_patients": int(table["patient_id"].nunique()),
            "n_folds": len(m.get("fold_roc_auc", {}))}
    manifest["training_data"] = data
    subgroups = json.loads(detail_file.read_text()).get(name, {}).get("subgroups", [])
    write_bundle(out, manifest, files, model_card(manifest, data, subgroups))
    log.info("final model %s (%s of %s) written to %s", name, combine, ", ".join(comps), out)
    return {"model": name, "components": comps, "threshold": m["threshold"]}


def _rule(p: Params) -> str:
    e = p.evaluate
    if e.threshold_method == "sensitivity":
        return f"the highest threshold with out-of-fold sensitivity >= {e.target_sensitivity}"
    return "Youden's J on the out-of-fold scores" if e.threshold_method == "youden" else f"fixed at {e.threshold}"
