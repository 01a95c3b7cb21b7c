"""The rows an image model trains on and is scored on (`FoldData`), built in one place (`fold_data`)
for the train_cnn stage's folds, the final stage's retraining and tuning trials alike."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lesion_ml.config import CnnModelConfig


@dataclass
class FoldData:
    """The rows of one fold. `train_groups` (patients) are needed for early stopping's
    holdout; `*_meta` for fusion; `extra_*` are minority-set copies (positives) with the id
    of the image each was made from, dropped when that image is held out. `valid_y` None: the
    validation rows are not scored while training (the final model has none)."""

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


def fold_meta(features: pd.DataFrame, image_ids: pd.Series, source: str = "features") -> np.ndarray:
    """The metadata features (one row per image_id) of `image_ids`, in their order, as float32.
    Raises ValueError naming `source` when an image has none."""
    meta = features.set_index("image_id").reindex(image_ids)
    if meta.isna().all(axis=1).any():
        missing = meta.index[meta.isna().all(axis=1)][:5].tolist()
        raise ValueError(f"{source}: no metadata features for images {missing}; rerun the prepare stage")
    return meta.to_numpy(np.float32)


def fold_data(table: pd.DataFrame, train: np.ndarray, cfg: CnnModelConfig, *, valid: np.ndarray | None = None,
              meta: np.ndarray | None = None, minority_index: pd.DataFrame | None = None,
              minority_source: str = "the minority set") -> FoldData:
    """The rows of `table` (image_id, target, patient_id) that the image model `cfg` trains on
    (`train`) and is scored on (`valid`; default: every other row; no scoring when there are none).

    Args:
        meta: with cfg.fusion, the metadata features of every row of `table` (`fold_meta`).
        minority_index: with cfg.balance.minority_set, the minority set's index (copy_id,
            source_id): the copies of the training positives are added; `minority_source` names
            it in the error raised when it holds no copies.
    """
    valid = ~train if valid is None else valid
    y = table["target"].to_numpy()
    data = FoldData(train_ids=table["image_id"][train].tolist(), train_y=y[train].astype(np.float32),
                    valid_ids=table["image_id"][valid].tolist(), valid_y=y[valid] if valid.any() else None,
                    train_groups=table["patient_id"].astype(str).to_numpy()[train])
    if cfg.fusion.enabled:
        if meta is None:
            raise ValueError("an image model with fusion needs the metadata features of its rows")
        data.train_meta, data.valid_meta = meta[train], meta[valid]
    if cfg.balance.minority_set:
        if minority_index is None or minority_index.empty:
            raise ValueError(f"balance.minority_set is on but {minority_source} holds no copies; set "
                             "params.yaml train_cnn.minority_set.copies above 0")
        index = minority_index[minority_index["source_id"].isin(set(data.train_ids))]
        data.extra_ids, data.extra_sources = index["copy_id"].tolist(), index["source_id"].tolist()
        if meta is not None and cfg.fusion.enabled:
            row_of = pd.Series(np.arange(len(table)), index=table["image_id"])
            data.extra_meta = meta[row_of.loc[index["source_id"]].to_numpy()]
    return data
