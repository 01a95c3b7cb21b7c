"""Tasks of the ingest, split and prepare stages."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lesion_ml.config import DataConfig, PrepareConfig, SplitConfig, SyntheticConfig
from lesion_ml.data.sources import ingest
from lesion_ml.data.split import assign_folds, fold_sizes
from lesion_ml.data.synthetic import generate_synthetic
from lesion_ml.io import write_json, write_parquet
from lesion_ml.tabular.prepare import clean_table, fit_transform_table, selection_summary
from tasks.cache import cached_task


@cached_task(outputs=('out',))
def generate_demo(cfg: SyntheticConfig, out: Path) -> Path:
    """Write the demo data set (ISIC 2024 format) into `out`."""
    generate_synthetic(out, cfg)
    return out


@cached_task(outputs=('lesions', 'images', 'report'))
def ingest_source(cfg: DataConfig, synthetic_dir: Path, lesions: Path, images: Path, report: Path) -> dict:
    """Read the source into the canonical lesion table and an image-store manifest."""
    ing = ingest(cfg, synthetic_dir)
    write_parquet(ing.table, lesions)
    write_json(ing.store.to_manifest(), images)
    write_json(ing.report, report)
    return {k: v for k, v in ing.report.items() if k != "skipped"}


@cached_task(outputs=('out',))
def make_folds(lesions: Path, cfg: SplitConfig, out: Path) -> dict:
    """Patient-grouped stratified folds for every row."""
    folds = assign_folds(pd.read_parquet(lesions), cfg)
    write_parquet(folds, out)
    return fold_sizes(folds)


@cached_task(outputs=('out',))
def clean_features(lesions: Path, cfg: PrepareConfig, out: Path) -> int:
    """Clean the metadata and add the engineered feature families (no fitting, no labels)."""
    features = clean_table(pd.read_parquet(lesions), cfg)
    write_parquet(features, out)
    return features.shape[1] - 2


@cached_task(outputs=('out',))
def prepare_fold(clean: Path, folds: Path, cfg: PrepareConfig, fold: int, out: Path) -> list[str]:
    """Fit clipping, imputation, encoding and selection on the fold's training rows; transform all rows."""
    selected, names = fit_transform_table(pd.read_parquet(clean), pd.read_parquet(folds), fold, cfg)
    write_parquet(selected, out)
    return names


@cached_task(outputs=('out',))
def write_selection(per_fold: list[list[str]], n_columns: int, n_candidates: int, out: Path) -> dict:
    """Selected features per fold and how often each was chosen."""
    summary = selection_summary(per_fold, n_columns, n_candidates)
    write_json(summary, out)
    return summary
