"""Stage `train_cnn@<name>`: one image model of train_cnn.models, every fold, OOF predictions."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml
from prefect import flow

from lesion_ml.config import ConfigError, load_params, to_plain
from lesion_ml.io import write_text
from tasks import paths
from tasks.train import combine_oof, train_cnn_fold


@flow(name="train_cnn")
def train_cnn_flow(name: str, params: str = str(paths.PARAMS)) -> Path:
    """Train the model `name` (a key of train_cnn.models) on each fold."""
    p = load_params(params)
    if name not in p.train_cnn.models:
        raise ConfigError(f"no model {name!r} in params.yaml train_cnn.models; have {sorted(p.train_cnn.models)}")
    cfg = p.train_cnn.models[name]
    if p.train_cnn.threads:
        torch.set_num_threads(p.train_cnn.threads)
    out = paths.CNN_DIR / name
    write_text(yaml.safe_dump(to_plain(cfg), sort_keys=True), out / "config.yaml")
    preds = [train_cnn_fold(paths.IMAGES, paths.FOLDS, cfg, p.train_cnn.device, p.train_cnn.num_workers, k, out,
                            name=name, features_dir=paths.FEATURES, minority=paths.MINORITY,
                            checkpoints=paths.CHECKPOINTS / name, plots=paths.TRAIN_PLOTS / name)
             for k in range(p.split.n_folds)]
    return combine_oof(preds, out / "oof.parquet")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m flows.train_cnn <name from params.yaml train_cnn.models>")
    train_cnn_flow(sys.argv[1])
