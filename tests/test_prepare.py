from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lesion_ml.config import DataConfig, PrepareConfig
from lesion_ml.data.schema import ISIC2024_COLUMNS, LEAK_COLUMNS
from lesion_ml.data.sources import DataError, ingest
from lesion_ml.tabular.prepare import clean_metadata, fit_transform_fold


@pytest.fixture(scope="module")
def demo_table(tiny_demo):
    return ingest(DataConfig(source="synthetic"), tiny_demo).table


def test_leak_and_id_columns_never_reach_features(demo_table):
    features = clean_metadata(demo_table)
    leaks = {c for c in ISIC2024_COLUMNS if c in LEAK_COLUMNS}
    assert not leaks & set(features.columns)
    assert not {"image_id", "patient_id", "attribution", "copyright_license", "image_type"} & set(features.columns)
    # even with k larger than the number of columns, nothing label-derived is selected
    train = np.ones(len(features), bool)
    _, names, _ = fit_transform_fold(features, demo_table["target"], train, PrepareConfig(k=500))
    assert not any(n.startswith(tuple(LEAK_COLUMNS)) for n in names)


def test_selects_k_features_without_missing_values(demo_table):
    features = clean_metadata(demo_table)
    train = np.arange(len(features)) % 3 != 0
    out, names, _ = fit_transform_fold(features, demo_table["target"], train, PrepareConfig(k=20))
    assert len(names) == 20 and list(out.columns) == names
    assert out.notna().all().all() and out.dtypes.eq("float32").all()


def test_fit_sees_training_rows_only(demo_table):
    """Changing validation rows must not change how training rows are transformed."""
    features = clean_metadata(demo_table)
    target = demo_table["target"]
    train = np.arange(len(features)) % 4 != 0
    a, names_a, _ = fit_transform_fold(features, target, train, PrepareConfig(k=10, method="f_classif"))
    poisoned = features.copy()
    num = [c for c in poisoned.columns if pd.api.types.is_numeric_dtype(poisoned[c])]
    poisoned.loc[~train, num] = 1e6  # would move medians, quantiles and scores if seen
    b, names_b, _ = fit_transform_fold(poisoned, target.where(train, 1 - target), train,
                                       PrepareConfig(k=10, method="f_classif"))
    assert names_a == names_b
    pd.testing.assert_frame_equal(a[train], b[train])


def test_text_in_numeric_column_is_named(demo_table):
    bad = demo_table.copy()
    bad["tbp_lv_areaMM2"] = bad["tbp_lv_areaMM2"].astype(object)
    bad.loc[3, "tbp_lv_areaMM2"] = "12,5"
    with pytest.raises(DataError, match=r"column 'tbp_lv_areaMM2', row 3: value '12,5' is not a number"):
        clean_metadata(bad)


def test_site_spellings_are_normalised():
    table = pd.DataFrame({"image_id": ["a", "b", "c"], "patient_id": ["p"] * 3, "target": [0, 1, 0],
                          "source": ["x"] * 3, "anatom_site_general": ["Back", "scalp", "unknown"]})
    out = clean_metadata(table)
    assert out["anatom_site_general"].tolist()[:2] == ["posterior torso", "head/neck"]
    assert pd.isna(out["anatom_site_general"].iloc[2])


def test_feature_names_are_safe_and_unique():
    from lesion_ml.tabular.prepare import safe_names

    assert safe_names(["site_head/neck", "site_head neck", "a{b}"]) == ["site_head_neck", "site_head_neck_2", "a_b"]
