from __future__ import annotations

import pandas as pd
import pytest

from lesion_ml.config import DataConfig, SplitConfig
from lesion_ml.data.sources import DataError, ingest
from lesion_ml.data.split import assign_folds


def test_no_patient_in_two_folds_and_every_row_has_one(tiny_demo):
    table = ingest(DataConfig(source="synthetic"), tiny_demo).table
    folds = assign_folds(table, SplitConfig(n_folds=3, seed=1))
    assert folds["image_id"].tolist() == table["image_id"].tolist()
    assert set(folds["fold"]) == {0, 1, 2}
    assert folds.groupby("patient_id")["fold"].nunique().max() == 1
    assert folds.groupby("fold")["target"].sum().min() >= 1  # stratified: positives in every fold


def test_same_seed_same_folds(tiny_demo):
    table = ingest(DataConfig(source="synthetic"), tiny_demo).table
    a = assign_folds(table, SplitConfig(n_folds=3, seed=5))
    b = assign_folds(table, SplitConfig(n_folds=3, seed=5))
    pd.testing.assert_frame_equal(a, b)


def test_fewer_patients_than_folds():
    table = pd.DataFrame({"image_id": list("abcd"), "patient_id": ["p1", "p1", "p2", "p2"], "target": [0, 1, 0, 1]})
    with pytest.raises(DataError, match="2 patients cannot fill 5 patient-grouped folds; lower params.yaml split.n_folds"):
        assign_folds(table, SplitConfig(n_folds=5))
