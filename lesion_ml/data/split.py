"""Patient-grouped, class-stratified cross-validation folds, and the rows of one fold as an
image model trains on them (`FoldData`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from lesion_ml.config import CnnModelConfig, SplitConfig
from lesion_ml.errors import DataError

log = logging.getLogger(__name__)


def assign_folds(table: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """Give every row a validation fold in 0..n_folds-1; no patient is in two folds.

    Args:
        table: canonical lesion table (image_id, patient_id, target).
        cfg: number of folds and seed.

    Returns:
        DataFrame with columns image_id, patient_id, target, fold (same row order as `table`).

    Raises:
        DataError: fewer patients than folds, so some fold would have no validation rows.
    """
    n_patients = table["patient_id"].nunique()
    if n_patients < cfg.n_folds:
        raise DataError(f"{n_patients} patients cannot fill {cfg.n_folds} patient-grouped folds; "
                        "lower params.yaml split.n_folds or add data")
    pos_patients = table.loc[table["target"] == 1, "patient_id"].nunique()
    if pos_patients < cfg.n_folds:
        log.warning("only %d patients have a malignant lesion; some of the %d folds will have none",
                    pos_patients, cfg.n_folds)
    sgkf = StratifiedGroupKFold(n_splits=cfg.n_folds, shuffle=True, random_state=cfg.seed)
    fold = np.full(len(table), -1, dtype=np.int64)
    for k, (_, valid) in enumerate(sgkf.split(np.zeros(len(table)), table["target"], table["patient_id"])):
        fold[valid] = k
    out = table[["image_id", "patient_id", "target"]].copy()
    out["fold"] = fold
    return out.reset_index(drop=True)


@dataclass
class FoldData:
    """The rows of one fold. `train_groups` (patients) are needed for early stopping's
    holdout; `*_meta` for fusion; `extra_*` are minority-set copies (positives) with the id
    of the image each was made from, dropped when that image is held out."""

    train_ids: list[str]
    train_y: np.ndarray
    valid_ids: list[str]
    valid_y: np.ndarray | None = None
    train_groups: np.ndarray | None = None
    train_meta: np.ndarray | None = None
    valid_meta: np.ndarray | None = None
    extra_ids: list[str] = field(default_factory=list)
    extra_sources: list[str] = field(default_factory=list)
    extra_meta: np.ndarray | None = None


def fold_data(f: pd.DataFrame, train: np.ndarray, cfg: CnnModelConfig,
              features: Path | pd.DataFrame | None, minority: Path | None) -> FoldData:
    """The fold's rows, plus its selected metadata features (fusion) and minority-set copies."""
    data = FoldData(train_ids=f["image_id"][train].tolist(), train_y=f["target"].to_numpy()[train].astype(np.float32),
                    valid_ids=f["image_id"][~train].tolist(), valid_y=f["target"].to_numpy()[~train],
                    train_groups=f["patient_id"].astype(str).to_numpy()[train])
    meta = None
    if cfg.fusion.enabled:
        table = features if isinstance(features, pd.DataFrame) else pd.read_parquet(features)
        meta = table.set_index("image_id").reindex(f["image_id"])
        if meta.isna().all(axis=1).any():
            missing = meta.index[meta.isna().all(axis=1)][:5].tolist()
            raise ValueError(f"{features}: no metadata features for images {missing}; rerun the prepare stage")
        meta = meta.to_numpy(np.float32)
        data.train_meta, data.valid_meta = meta[train], meta[~train]
    if cfg.balance.minority_set:
        index = pd.read_parquet(minority / "index.parquet")
        if index.empty:
            raise ValueError(f"balance.minority_set is on but {minority} holds no copies; set "
                             "params.yaml train_cnn.minority_set.copies above 0")
        index = index[index["source_id"].isin(set(data.train_ids))]
        data.extra_ids, data.extra_sources = index["copy_id"].tolist(), index["source_id"].tolist()
        if meta is not None:
            row_of = pd.Series(np.arange(len(f)), index=f["image_id"])
            data.extra_meta = meta[row_of.loc[index["source_id"]].to_numpy()]
    return data


def fold_sizes(folds: pd.DataFrame) -> dict[int, dict[str, int]]:
    """Rows ("size") and malignant rows ("sum") of each fold of `assign_folds`' table."""
    return folds.groupby("fold")["target"].agg(["size", "sum"]).to_dict(orient="index")
