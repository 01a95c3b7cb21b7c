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


@cached_task(outputs=('out_weights', 'out_history', 'out_pred', 'out_plot', 'checkpoint'),
             runtime=('checkpoint_every_s',))
def train_cnn_fold(*, images: Path, folds: Path, cfg: CnnModelConfig, fold: int, device: str, num_workers: int,
                   out_weights: Path, out_history: Path, out_pred: Path, out_plot: Path | None = None,
                   name: str = "", features: Path | None = None, minority_index: Path | None = None,
                   minority_images: Path | None = None, checkpoint: Path | None = None, threads: int = 0,
                   checkpoint_every_s: float = 0.0) -> Path:
    """Train one backbone on one fold (`train_image_fold`, resumed from `checkpoint` after a kill,
    written at most every `checkpoint_every_s` seconds); write the weights, history, validation
    predictions and per-epoch metrics (`out_plot`). `features` (fusion) and the minority set's
    files are read only when `cfg` uses them. `threads` > 0 sets torch's CPU threads in the
    process that runs the task (a Dask worker too)."""
    use_threads(threads)
    f = pd.read_parquet(folds)
    feats = pd.read_parquet(features) if cfg.fusion.enabled and features is not None else None
    index = pd.read_parquet(minority_index) if cfg.balance.minority_set and minority_index is not None else None
    try:
        result = train_image_fold(json.loads(images.read_text()), f, cfg, fold=fold, device=device,
                                  num_workers=num_workers, name=name, features=feats, minority_index=index,
                                  minority_images=minority_images, checkpoint=checkpoint,
                                  checkpoint_every_s=checkpoint_every_s)
    except BadImageError as err:  # passed ingest's check (data.verify_images) but does not decode
        raise BadImageError(f"{err} (params.yaml data.verify_images: decode finds such images at ingest, and "
                            "data.on_bad_image: skip drops them)") from None
    save_weights(result.model.state_dict(), out_weights)
    write_json(cnn_history(result), out_history)
    if out_plot is not None:
        write_csv(pd.DataFrame(result.history), out_plot)
    return write_parquet(valid_predictions(f, train_mask(f, fold), result.valid_pred), out_pred)
