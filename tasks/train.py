"""Tasks of the train_gbdt and train_cnn stages: one fold each, outputs are files."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lesion_ml.config import CnnModelConfig, MinoritySetConfig, TrainGbdtConfig
from lesion_ml.data.fold_outputs import combine_predictions, train_mask, valid_predictions, write_gbdt_fold
from lesion_ml.data.images import ImageStore
from lesion_ml.errors import BadImageError
from lesion_ml.image.balance import write_minority_set
from lesion_ml.image.fold import cnn_history, train_image_fold
from lesion_ml.image.inference import use_threads
from lesion_ml.io import save_weights, write_csv, write_json, write_parquet
from lesion_ml.tabular.gbdt import fit_gbdt, predict_gbdt
from tasks.cache import cached_task


@cached_task(outputs=('out',))
def train_gbdt_fold(features: Path, folds: Path, cfg: TrainGbdtConfig, fold: int, out: Path) -> Path:
    """Fit LightGBM on the fold's training rows; write its model and validation predictions."""
    f = pd.read_parquet(folds)
    train = train_mask(f, fold)
    X = pd.read_parquet(features).set_index("image_id").loc[f["image_id"]]  # noqa: N806
    model = fit_gbdt(X[train], f["target"].to_numpy()[train], cfg)
    write_gbdt_fold(model, X.columns, cfg.seeds, fold, out)
    return write_parquet(valid_predictions(f, train, predict_gbdt(model, X[~train])), out / f"pred_fold{fold}.parquet")


@cached_task(outputs=('out', 'checkpoints', 'plots'))
def train_cnn_fold(images: Path, folds: Path, cfg: CnnModelConfig, device: str, num_workers: int, fold: int,
                   out: Path, name: str = "", features_dir: Path | None = None, minority: Path | None = None,
                   checkpoints: Path | None = None, plots: Path | None = None, threads: int = 0) -> Path:
    """Train one backbone on one fold (`train_image_fold`, resumed from `checkpoints`/fold<k>.pt after a
    kill); write the weights, history and validation predictions. `threads` > 0 sets torch's CPU
    threads in the process that runs the task (a Dask worker too)."""
    use_threads(threads)
    f = pd.read_parquet(folds)
    try:
        result = train_image_fold(json.loads(images.read_text()), f, fold, cfg, device, num_workers, name,
                                  features_dir, minority, checkpoints)
    except BadImageError as err:  # passed ingest's check (data.verify_images) but does not decode
        raise BadImageError(f"{err} (params.yaml data.verify_images: decode finds such images at ingest, and "
                            "data.on_bad_image: skip drops them)") from None
    save_weights(result.model.state_dict(), out / f"fold{fold}.safetensors")
    write_json(cnn_history(result), out / f"history_fold{fold}.json")
    if plots is not None:
        write_csv(pd.DataFrame(result.history), plots / f"fold{fold}.csv")
    return write_parquet(valid_predictions(f, train_mask(f, fold), result.valid_pred), out / f"pred_fold{fold}.parquet")


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
    return write_parquet(combine_predictions([pd.read_parquet(p) for p in pred_files], out), out)
