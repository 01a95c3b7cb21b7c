"""Stage `train_cnn@<name>`: one image model of train_cnn.models, every fold, OOF predictions."""
from __future__ import annotations

import sys
from pathlib import Path

import yaml
from prefect import flow

from flows.runner import run_all, visible_gpus
from lesion_ml import artefacts as cat
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
    cfg, n = p.train_cnn.models[name], p.split.n_folds
    keep_only(cat.cnn_dir(name), cat.cnn_files(name, n))
    keep_only(cat.train_plots(name), cat.plot_files(name, n))
    write_text(yaml.safe_dump(to_plain(cfg), sort_keys=True), cat.cnn_config(name))
    minority = cfg.balance.minority_set
    return [{"images": cat.IMAGES, "folds": cat.FOLDS, "cfg": cfg, "fold": k, "device": p.train_cnn.device,
             "num_workers": p.train_cnn.num_workers, "name": name,
             "features": cat.features(k) if cfg.fusion.enabled else None,
             "minority_index": cat.MINORITY_INDEX if minority else None,
             "minority_images": cat.MINORITY_IMAGES if minority else None,
             "checkpoint": cat.checkpoint(name, k), "out_weights": cat.cnn_weights(name, k),
             "out_history": cat.cnn_history(name, k), "out_pred": cat.cnn_pred(name, k),
             "out_plot": cat.train_plot(name, k), "threads": p.train_cnn.threads,
             "checkpoint_every_s": p.train_cnn.checkpoint_every_s} for k in range(n)]


def train_models(p: Params, names: list[str], label: str) -> dict[str, Path]:
    """Every fold of the image models `names` (at once on a Dask task runner: the subflow `label`),
    then each model's out-of-fold table; {name: its out-of-fold scores}."""
    gpus = visible_gpus(p.train_cnn.device) if p.orchestration.task_runner == "dask" else 0
    calls = [c for name in names for c in fold_calls(p, name)]
    preds = run_all(train_cnn_fold, calls, p.orchestration, name=label, n_gpus=gpus)
    return {name: combine_oof(pred_files=[pred for call, pred in zip(calls, preds) if call["name"] == name],
                              out=cat.cnn_oof(name)) for name in names}


@flow(name="train_cnn")
def train_cnn_flow(name: str, params: str = str(cat.PARAMS)) -> Path:
    """Train the model `name` (a key of train_cnn.models) on each fold."""
    return train_models(load_params(params), [name], f"train_cnn-{name}-folds")[name]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m flows.train_cnn <name from params.yaml train_cnn.models>")
    train_cnn_flow(sys.argv[1])
