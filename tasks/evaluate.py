"""Task of the evaluate stage."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from lesion_ml.config import EvaluateConfig
from lesion_ml.evaluate.metrics import classification_metrics
from lesion_ml.io import write_json
from tasks.retry import IO_RETRIES


@task(cache_policy=NONE, **IO_RETRIES)
def evaluate_models(oof_files: dict[str, Path], cfg: EvaluateConfig, out: Path) -> dict:
    """The same metrics, on the same out-of-fold rows, for every model; plus per-fold ROC-AUC."""
    results = {}
    ids = None
    for name, path in sorted(oof_files.items()):
        oof = pd.read_parquet(path).sort_values("image_id")
        if ids is not None and not ids.equals(oof["image_id"].reset_index(drop=True)):
            raise ValueError(f"{path}: its rows differ from the other models'; every model must be "
                             "evaluated on the same out-of-fold rows (rerun the train stages)")
        ids = oof["image_id"].reset_index(drop=True)
        m = classification_metrics(oof["target"].to_numpy(), oof["pred"].to_numpy(), cfg.threshold)
        m["fold_roc_auc"] = {str(k): classification_metrics(g["target"], g["pred"], cfg.threshold)["roc_auc"]
                             for k, g in oof.groupby("fold")}
        results[name] = m
    write_json({"models": results}, out)
    return {name: {"roc_auc": m["roc_auc"], "pauc_80": m["pauc_80"]} for name, m in results.items()}
