"""Task of the train_cnn stage: one fold of an image model; outputs are files."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lesion_ml.config import CnnModelConfig
from lesion_ml.data.fold_outputs import train_mask, valid_predictions
from lesion_ml.errors import BadImageError
from lesion_ml.image.fold import cnn_history, train_image_fold
from lesion_ml.image.inference import use_threads
from lesion_ml.io import save_weights, write_csv, write_json, write_parquet
from tasks.cache import cached_task


@cached_task(outputs=('out', 'checkpoints', 'plots'), runtime=('checkpoint_every_s',))
def train_cnn_fold(images: Path, folds: Path, cfg: CnnModelConfig, device: str, num_workers: int, fold: int,
                   out: Path, name: str = "", features_dir: Path | None = None, minority: Path | None = None,
                   checkpoints: Path | None = None, plots: Path | None = None, threads: int = 0,
                   checkpoint_every_s: float = 0.0) -> Path:
    """Train one backbone on one fold (`train_image_fold`, resumed from `checkpoints`/fold<k>.pt after a
    kill, written at most every `checkpoint_every_s` seconds); write the weights, history and
    validation predictions. `threads` > 0 sets torch's CPU threads in the process that runs the
    task (a Dask worker too)."""
    use_threads(threads)
    f = pd.read_parquet(folds)
    try:
        result = train_image_fold(json.loads(images.read_text()), f, fold, cfg, device, num_workers, name,
                                  features_dir, minority, checkpoints, checkpoint_every_s)
    except BadImageError as err:  # passed ingest's check (data.verify_images) but does not decode
        raise BadImageError(f"{err} (params.yaml data.verify_images: decode finds such images at ingest, and "
                            "data.on_bad_image: skip drops them)") from None
    save_weights(result.model.state_dict(), out / f"fold{fold}.safetensors")
    write_json(cnn_history(result), out / f"history_fold{fold}.json")
    if plots is not None:
        write_csv(pd.DataFrame(result.history), plots / f"fold{fold}.csv")
    return write_parquet(valid_predictions(f, train_mask(f, fold), result.valid_pred), out / f"pred_fold{fold}.parquet")
