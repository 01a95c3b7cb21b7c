"""Stage `train_gbdt`: LightGBM on the selected metadata, out-of-fold predictions."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows import paths
from flows.runner import run_all
from lesion_ml.config import load_params
from tasks.outputs import combine_oof, keep_only
from tasks.train_gbdt import train_gbdt_fold


@flow(name="train_gbdt")
def train_gbdt_flow(params: str = str(paths.PARAMS)) -> Path:
    """One model per fold; their validation predictions form the OOF table."""
    p = load_params(params)
    keep_only(paths.GBDT_DIR, paths.gbdt_files(p.split.n_folds, p.train_gbdt.seeds))
    calls = [{"features": paths.features_path(k), "folds": paths.FOLDS, "cfg": p.train_gbdt, "fold": k,
              "out": paths.GBDT_DIR} for k in range(p.split.n_folds)]
    preds = run_all(train_gbdt_fold, calls, p.orchestration, "train_gbdt-folds")
    return combine_oof(preds, paths.GBDT_DIR / "oof.parquet")


if __name__ == "__main__":
    train_gbdt_flow()
