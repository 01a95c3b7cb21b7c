"""Patient-grouped, class-stratified cross-validation folds."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from lesion_ml.config import SplitConfig
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


def fold_sizes(folds: pd.DataFrame) -> dict[int, dict[str, int]]:
    """Rows ("size") and malignant rows ("sum") of each fold of `assign_folds`' table."""
    return folds.groupby("fold")["target"].agg(["size", "sum"]).to_dict(orient="index")
