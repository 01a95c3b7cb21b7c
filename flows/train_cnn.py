"""Stage `train_cnn@<name>`: one image model of train_cnn.models, every fold, OOF predictions."""
from __future__ import annotations

import sys
from pathlib import Path

import yaml
from prefect import flow

from flows import paths
from flows.runner import run_all, visible_gpus
from lesion_ml.config import Params, load_params, to_plain
from lesion_ml.errors import ConfigError
from lesion_ml.io import write_text
from tasks.outputs import combine_oof, keep_only
from tasks.train_cnn import train_cnn_fold


def fold_calls(p: Params, name: str) -> list[dict]:
    """The train_cnn_fold arguments of every fold of model `name` (small: paths and configs); the
    model's output and plot folders are left with only the files of these folds."""
    if name not in p.train_cnn.models:
        raise ConfigError(f"no model {name!r} in params.yaml train_cnn.models; have {sorted(p.train_cnn.models)}")
    cfg = p.train_cnn.models[name]
    out = paths.CNN_DIR / name
    keep_only(out, paths.cnn_files(p.split.n_folds))
    keep_only(paths.TRAIN_PLOTS / name, paths.plot_files(p.split.n_folds))
    write_text(yaml.safe_dump(to_plain(cfg), sort_keys=True), out / "config.yaml")
    return [{"images": paths.IMAGES, "folds": paths.FOLDS, "cfg": cfg, "device": p.train_cnn.device,
             "num_workers": p.train_cnn.num_workers, "fold": k, "out": out, "name": name,
             "features_dir": paths.FEATURES, "minority": paths.MINORITY, "checkpoints": paths.CHECKPOINTS / name,
             "plots": paths.TRAIN_PLOTS / name, "threads": p.train_cnn.threads,
             "checkpoint_every_s": p.train_cnn.checkpoint_every_s} for k in range(p.split.n_folds)]


@flow(name="train_cnn")
def train_cnn_flow(name: str, params: str = str(paths.PARAMS)) -> Path:
    """Train the model `name` (a key of train_cnn.models) on each fold."""
    p = load_params(params)
    gpus = visible_gpus(p.train_cnn.device) if p.orchestration.task_runner == "dask" else 0
    preds = run_all(train_cnn_fold, fold_calls(p, name), p.orchestration, f"train_cnn-{name}-folds", gpus)
    return combine_oof(preds, paths.CNN_DIR / name / "oof.parquet")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m flows.train_cnn <name from params.yaml train_cnn.models>")
    train_cnn_flow(sys.argv[1])
