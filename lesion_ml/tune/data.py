"""What a tuning study fits and scores on: the cleaned metadata aligned with the outer folds."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class TuneData:
    """The cleaned metadata (the prepare stage's clean table) aligned with the outer folds: one entry
    per image in `ids`' order; `groups` are the patients."""

    ids: np.ndarray
    features: pd.DataFrame
    y: np.ndarray
    groups: np.ndarray
    fold: np.ndarray

    @classmethod
    def from_frames(cls, clean: pd.DataFrame, folds: pd.DataFrame) -> TuneData:
        """The study data of the clean table (image_id, target and the feature columns) and the split's
        folds table (image_id, patient_id, fold); `clean` is not modified.

        Raises:
            ValueError: an image of `clean` has no fold, naming up to five of them.
        """
        features = clean.drop(columns=["image_id", "target"])
        ids, y = clean["image_id"].to_numpy(), clean["target"].to_numpy().astype(int)
        f = folds.set_index("image_id").reindex(ids)
        if f["fold"].isna().any():
            missing = ids[f["fold"].isna().to_numpy()][:5].tolist()
            raise ValueError(f"the folds table has no fold for images {missing} of the clean features table; "
                             "rerun the split and prepare stages")
        return cls(ids, features, y, f["patient_id"].astype(str).to_numpy(), f["fold"].to_numpy().astype(int))

    def digest(self) -> str:
        """A hash of the ids, labels, folds and features: part of a study's name (see study_base)."""
        h = hashlib.sha256()
        for a in (self.ids.astype(str), self.y, self.fold):
            h.update(np.ascontiguousarray(a).tobytes() if a.dtype != object else "\n".join(a).encode())
        h.update(pd.util.hash_pandas_object(self.features, index=False).to_numpy().tobytes())
        return h.hexdigest()
