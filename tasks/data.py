"""Tasks of the ingest, split and prepare stages."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from lesion_ml.config import DataConfig, PrepareConfig, SplitConfig, SyntheticConfig
from lesion_ml.data.sources import ingest
from lesion_ml.data.synthetic import generate_synthetic
from lesion_ml.io import write_json, write_parquet
from lesion_ml.split import assign_folds
from lesion_ml.tabular.prepare import clean_metadata, fit_transform_fold
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
    return folds.groupby("fold")["target"].agg(["size", "sum"]).to_dict(orient="index")


@cached_task(outputs=('out',))
def clean_features(lesions: Path, cfg: PrepareConfig, out: Path) -> int:
    """Clean the metadata and add the engineered feature families (no fitting, no labels)."""
    table = pd.read_parquet(lesions)
    features = clean_metadata(table, cfg.features)
    features.insert(0, "image_id", table["image_id"].to_numpy())
    features.insert(1, "target", table["target"].to_numpy())
    write_parquet(features, out)
    return features.shape[1] - 2


@cached_task(outputs=('out',))
def prepare_fold(clean: Path, folds: Path, cfg: PrepareConfig, fold: int, out: Path) -> list[str]:
    """Fit clipping, imputation, encoding and selection on the fold's training rows; transform all rows."""
    features = pd.read_parquet(clean)
    ids, target = features.pop("image_id"), features.pop("target")
    fold_of = pd.read_parquet(folds).set_index("image_id")["fold"].reindex(ids).to_numpy()
    selected, names, _ = fit_transform_fold(features, target, fold_of != fold, cfg)
    selected.insert(0, "image_id", ids.to_numpy())
    write_parquet(selected, out)
    return names


@cached_task(outputs=('out',))
def write_selection(per_fold: list[list[str]], n_columns: int, n_candidates: int, out: Path) -> dict:
    """Selected features per fold and how often each was chosen."""
    counts = pd.Series([f for names in per_fold for f in names]).value_counts()
    summary = {
        "n_input_columns": n_columns,
        "n_candidate_features": n_candidates,
        "n_selected": int(np.mean([len(n) for n in per_fold])),
        "per_fold": {str(i): names for i, names in enumerate(per_fold)},
        "stability": {name: round(int(c) / len(per_fold), 3) for name, c in counts.items()},
    }
    write_json(summary, out)
    return summary


def count_metadata_columns(lesions: Path) -> int:
    """How many columns the source offered, the canonical image_id/source columns aside
    (55 for ISIC 2024: its isic_id became image_id)."""
    cols = pq.read_schema(lesions).names  # the schema only: no need to load 400k rows
    return int(len([c for c in cols if c != "source"]))
