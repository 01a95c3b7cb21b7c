"""Tasks of the train_gbdt and train_cnn stages: one fold each, outputs are files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lesion_ml.balance import write_minority_set
from lesion_ml.config import CnnModelConfig, MinoritySetConfig, TrainGbdtConfig
from lesion_ml.data.images import ImageStore, open_store
from lesion_ml.errors import BadImageError
from lesion_ml.inference import select_device, use_threads
from lesion_ml.io import save_torch, write_csv, write_json, write_parquet, write_text
from lesion_ml.models.gbdt import fit_gbdt, predict_gbdt
from lesion_ml.split import fold_data
from lesion_ml.train import train_fold
from tasks.cache import cached_task


def _fold_rows(folds: Path, fold: int) -> tuple[pd.DataFrame, np.ndarray]:
    f = pd.read_parquet(folds)
    return f, (f["fold"] != fold).to_numpy()


@cached_task(outputs=('out',))
def train_gbdt_fold(features: Path, folds: Path, cfg: TrainGbdtConfig, fold: int, out: Path) -> Path:
    """Fit LightGBM on the fold's training rows; write its model and validation predictions."""
    f, train = _fold_rows(folds, fold)
    X = pd.read_parquet(features).set_index("image_id").loc[f["image_id"]]  # noqa: N806
    model = fit_gbdt(X[train], f["target"].to_numpy()[train], cfg)
    for seed, m in zip(cfg.seeds, model.models):
        write_text(m.booster_.model_to_string(), out / f"fold{fold}_seed{seed}.txt")
    write_json(dict(zip(X.columns, model.feature_importances_.round(4))), out / f"importance_fold{fold}.json")
    pred = f.loc[~train, ["image_id", "fold", "target"]].assign(pred=predict_gbdt(model, X[~train]))
    return write_parquet(pred, out / f"pred_fold{fold}.parquet")


@cached_task(outputs=('out', 'checkpoints', 'plots'))
def train_cnn_fold(images: Path, folds: Path, cfg: CnnModelConfig, device: str, num_workers: int, fold: int,
                   out: Path, name: str = "", features_dir: Path | None = None, minority: Path | None = None,
                   checkpoints: Path | None = None, plots: Path | None = None, threads: int = 0) -> Path:
    """Train one backbone on one fold; write the weights, history and validation predictions.

    Training resumes from `checkpoints`/fold<k>.pt when a run was killed (see train_fold).
    `threads` > 0 sets torch's CPU threads in the process that runs the task (a Dask worker too).
    """
    use_threads(threads)
    f, train = _fold_rows(folds, fold)
    features = features_dir / f"fold{fold}.parquet" if features_dir is not None else None
    data = fold_data(f, train, cfg, features, minority)
    try:
        with open_store(json.loads(images.read_text()),
                        minority / "images.hdf5" if cfg.balance.minority_set else None) as store:
            result = train_fold(store, data, cfg, select_device(device), num_workers, seed=cfg.seed + fold,
                                checkpoint=checkpoints / f"fold{fold}.pt" if checkpoints else None,
                                label=f"{name} fold {fold}".strip())
    except BadImageError as err:  # passed ingest's check (data.verify_images) but does not decode
        raise BadImageError(f"{err} (params.yaml data.verify_images: decode finds such images at ingest, and "
                            "data.on_bad_image: skip drops them)") from None
    save_torch(result.model.state_dict(), out / f"fold{fold}.pt")
    n_valid = len(result.valid_pred)
    write_json({"best_epoch": result.best_epoch, "resumed_from_epoch": result.resumed_from,
                "epochs": result.history,
                "valid_predict": {"images": n_valid, "seconds": result.predict_seconds,
                                  "images_per_s": round(n_valid / max(result.predict_seconds, 1e-9), 1)}},
               out / f"history_fold{fold}.json")
    if plots is not None:
        write_csv(pd.DataFrame(result.history), plots / f"fold{fold}.csv")
    pred = f.loc[~train, ["image_id", "fold", "target"]].assign(pred=result.valid_pred)
    return write_parquet(pred, out / f"pred_fold{fold}.parquet")


@cached_task(outputs=('out',))
def build_minority_set(images: Path, lesions: Path, cfg: MinoritySetConfig, out: Path) -> int:
    """Write cfg.copies augmented copies of every malignant image (an empty set when 0)."""
    store = ImageStore.from_manifest(json.loads(images.read_text()))
    table = pd.read_parquet(lesions, columns=["image_id", "target"])
    positives = table.loc[table["target"] == 1, "image_id"].tolist() if cfg.copies else []
    return len(write_minority_set(store, positives, cfg, out))


@cached_task(outputs=('out',))
def combine_oof(pred_files: list[Path], out: Path) -> Path:
    """Concatenate per-fold validation predictions into one out-of-fold table."""
    oof = pd.concat([pd.read_parquet(p) for p in pred_files]).sort_values("image_id").reset_index(drop=True)
    if oof["image_id"].duplicated().any():
        raise ValueError(f"{out}: an image was predicted in two folds; the folds overlap")
    return write_parquet(oof, out)
