"""Stage `train_gbdt`: LightGBM on the selected metadata, out-of-fold predictions."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.runner import run_all
from lesion_ml import artefacts as cat
from lesion_ml.config import load_params
from tasks.outputs import combine_oof, keep_only
from tasks.train_gbdt import train_gbdt_fold


@flow(name="train_gbdt")
def train_gbdt_flow(params: str = str(cat.PARAMS)) -> Path:
    """One model per fold; their validation predictions form the OOF table."""
    p = load_params(params)
    keep_only(cat.GBDT_DIR, cat.gbdt_files(p.split.n_folds, p.train_gbdt.seeds))
    calls = [{"features": cat.features(k), "folds": cat.FOLDS, "cfg": p.train_gbdt, "fold": k,
              "out_boosters": [cat.gbdt_booster(k, s) for s in p.train_gbdt.seeds],
              "out_importance": cat.importance(k), "out_pred": cat.gbdt_pred(k)} for k in range(p.split.n_folds)]
    preds = run_all(train_gbdt_fold, calls, p.orchestration, name="train_gbdt-folds")
    return combine_oof(pred_files=preds, out=cat.GBDT_OOF)


if __name__ == "__main__":
    train_gbdt_flow()
