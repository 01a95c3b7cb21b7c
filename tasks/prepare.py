"""Tasks of the prepare stage: the cleaned metadata, each fold's fitted features, the selection report."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lesion_ml.config import PrepareConfig
from lesion_ml.io import write_json, write_parquet
from lesion_ml.tabular.prepare import clean_table, fit_transform_table, selection_summary
from tasks.cache import cached_task


@cached_task(outputs=('out',))
def clean_features(*, lesions: Path, cfg: PrepareConfig, out: Path) -> int:
    """Clean the metadata and add the engineered feature families (no fitting, no labels)."""
    features = clean_table(pd.read_parquet(lesions), cfg)
    write_parquet(features, out)
    return features.shape[1] - 2


@cached_task(outputs=('out',))
def prepare_fold(*, clean: Path, folds: Path, cfg: PrepareConfig, fold: int, out: Path) -> list[str]:
    """Fit clipping, imputation, encoding and selection on the fold's training rows; transform all rows."""
    selected, names = fit_transform_table(pd.read_parquet(clean), pd.read_parquet(folds), fold=fold, cfg=cfg)
    write_parquet(selected, out)
    return names


@cached_task(outputs=('out',))
def write_selection(*, per_fold: list[list[str]], n_columns: int, n_candidates: int, out: Path) -> dict:
    """Selected features per fold and how often each was chosen."""
    summary = selection_summary(per_fold, n_columns, n_candidates)
    write_json(summary, out)
    return summary
