from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lesion_ml.config import DataConfig, PrepareConfig, SelectConfig
from lesion_ml.data.schema import ISIC2024_COLUMNS, LEAK_COLUMNS
from lesion_ml.data.sources import DataError, ingest
from lesion_ml.tabular.prepare import clean_metadata, fit_transform_fold, safe_names

ALL = ("size_shape", "colour", "border", "position", "patient_relative")


def cfg(k=20, method="mutual_info", impute="median", **kw) -> PrepareConfig:
    return PrepareConfig(impute=impute, select=SelectConfig(k=k, method=method, **kw))


@pytest.fixture(scope="module")
def demo_table(tiny_demo):
    return ingest(DataConfig(source="synthetic"), tiny_demo).table


def test_leakage_guard_on_the_real_column_list(demo_table):
    features = clean_metadata(demo_table, ALL)
    leaks = {c for c in ISIC2024_COLUMNS if c in LEAK_COLUMNS}
    assert leaks == {"target", "lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5",
                     "mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence"}
    assert not leaks & set(features.columns)
    assert not {"image_id", "patient_id", "attribution", "copyright_license", "image_type"} & set(features.columns)
    # whatever k is, nothing label-derived can be selected
    _, names, _ = fit_transform_fold(features, demo_table["target"], np.ones(len(features), bool), cfg(k=500))
    assert not [n for n in names if any(n.startswith(leak) for leak in leaks)]


@pytest.mark.parametrize("method", ["mutual_info", "f_classif", "chi2", "l1", "gbdt"])
def test_each_method_selects_k_complete_float_columns(demo_table, method):
    features = clean_metadata(demo_table, ALL)
    train = np.arange(len(features)) % 3 != 0
    out, names, _ = fit_transform_fold(features, demo_table["target"], train, cfg(k=12, method=method))
    assert len(names) == 12 and list(out.columns) == names and len(set(names)) == 12
    assert out.notna().all().all() and out.dtypes.eq("float32").all()


@pytest.mark.parametrize("impute", ["median", "knn", "iterative"])
def test_imputers_fill_every_value_and_add_indicators(demo_table, impute):
    table = demo_table.copy()
    table.loc[::4, "tbp_lv_areaMM2"] = np.nan
    features = clean_metadata(table, ())
    train = np.arange(len(features)) % 3 != 0
    out, names, _ = fit_transform_fold(features, table["target"], train, cfg(k=500, impute=impute,
                                                                               correlation_threshold=None))
    assert out.notna().all().all()
    assert any("missingindicator_tbp_lv_areaMM2" == n for n in names)


@pytest.mark.parametrize("impute", ["median", "knn", "iterative"])
def test_fit_sees_training_rows_only(demo_table, impute):
    """Changing validation rows (values and labels) must not change the fitted preprocessing."""
    features = clean_metadata(demo_table, ALL)
    target = demo_table["target"]
    train = np.arange(len(features)) % 4 != 0
    c = cfg(k=10, method="f_classif", impute=impute)
    a, names_a, _ = fit_transform_fold(features, target, train, c)
    poisoned = features.copy()
    num = [col for col in poisoned.columns if pd.api.types.is_numeric_dtype(poisoned[col])]
    poisoned.loc[~train, num] = 1e6  # would move medians, quantiles, neighbours and scores if seen
    b, names_b, _ = fit_transform_fold(poisoned, target.where(train, 1 - target), train, c)
    assert names_a == names_b
    pd.testing.assert_frame_equal(a[train], b[train])


def test_identical_output_for_a_seed(demo_table):
    features = clean_metadata(demo_table, ALL)
    train = np.arange(len(features)) % 2 == 0
    a, na, _ = fit_transform_fold(features, demo_table["target"], train, cfg(k=15))
    b, nb, _ = fit_transform_fold(features, demo_table["target"], train, cfg(k=15))
    assert na == nb
    pd.testing.assert_frame_equal(a, b)


def test_patient_relative_features_never_use_labels(demo_table):
    flipped = demo_table.assign(target=1 - demo_table["target"])
    a, b = clean_metadata(demo_table, ALL), clean_metadata(flipped, ALL)
    rel = [c for c in a.columns if c.startswith(("pr_", "fe_patient"))]
    assert len(rel) > 10
    pd.testing.assert_frame_equal(a[rel], b[rel])


def test_patient_relative_z_score_is_within_patient(demo_table):
    out = clean_metadata(demo_table, ("patient_relative",))
    z = out["pr_z_clin_size_long_diam_mm"].groupby(demo_table["patient_id"].to_numpy())
    assert np.allclose(z.mean(), 0, atol=1e-6)
    counts = demo_table.groupby("patient_id")["image_id"].transform("size")
    assert (out["fe_patient_lesion_count"] == counts).all()


def test_feature_families_are_switchable(demo_table):
    none = clean_metadata(demo_table, ())
    shape = clean_metadata(demo_table, ("size_shape",))
    assert not [c for c in none.columns if c.startswith(("fe_", "pr_"))]
    assert {"fe_axis_ratio", "fe_shape_index"} <= set(shape.columns)
    assert not [c for c in shape.columns if c.startswith("pr_")]


def test_text_in_numeric_column_is_named(demo_table):
    bad = demo_table.copy()
    bad["tbp_lv_areaMM2"] = bad["tbp_lv_areaMM2"].astype(object)
    bad.loc[3, "tbp_lv_areaMM2"] = "12,5"
    with pytest.raises(DataError, match=r"column 'tbp_lv_areaMM2', row 3 \(image_id '[^']+'\): value '12,5' "
                                        "is not a number"):
        clean_metadata(bad)


def test_unknown_category_spelling_lists_the_allowed_set(demo_table):
    bad = demo_table.copy()
    bad["sex"] = bad["sex"].astype(object)
    bad.loc[2, "sex"] = "femme"
    with pytest.raises(DataError, match=r"column 'sex', row 2 \(image_id '[^']+'\): unknown category 'femme'; "
                                        r"allowed \(any case\): \['female', 'male'\]"):
        clean_metadata(bad)


def test_site_spellings_of_other_sources_are_normalised():
    table = pd.DataFrame({"image_id": list("abcd"), "patient_id": ["p"] * 4, "target": [0, 1, 0, 1],
                          "source": ["x"] * 4, "anatom_site_general": ["Back", "scalp", "unknown", "palms/soles"],
                          "sex": ["MALE", " female", "unknown", None]})
    out = clean_metadata(table)
    assert out["anatom_site_general"].tolist()[:2] == ["posterior torso", "head/neck"]
    assert out["anatom_site_general"].iloc[3] == "lower extremity" and pd.isna(out["anatom_site_general"].iloc[2])
    assert out["sex"].tolist()[:2] == ["male", "female"] and out["sex"].iloc[2:].isna().all()


def test_correlation_pruning_drops_duplicates():
    from lesion_ml.tabular.select import CorrelationPruner

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 1))
    X = np.hstack([x, 2 * x + 0.001 * rng.normal(size=(200, 1)), rng.normal(size=(200, 1)), np.ones((200, 1))])
    assert CorrelationPruner(0.95).fit(X).get_support().tolist() == [True, False, True, False]


def test_feature_names_are_safe_and_unique():
    assert safe_names(["site_head/neck", "site_head neck", "a{b}"]) == ["site_head_neck", "site_head_neck_2", "a_b"]


def test_subsample_keeps_every_positive_and_caps_rows():
    from lesion_ml.tabular.select import subsample_rows

    y = np.array([0] * 1000 + [1] * 30)
    idx = subsample_rows(y, 200, seed=3)
    assert len(idx) == 200 and (y[idx] == 1).sum() == 30 and np.all(np.diff(idx) > 0)
    assert len(subsample_rows(y, None, 0)) == 1030 and len(subsample_rows(y, 5000, 0)) == 1030


def test_label_derived_columns_of_other_sources_never_reach_features():
    from conftest import shared_dataset

    root = shared_dataset("ham10000-400")
    table = ingest(DataConfig(source="folder", path=str(root))).table
    assert {"target_excl_akiec", "dx_code", "diagnosis", "dx_type"} <= set(table.columns)
    features = clean_metadata(table, ALL)
    assert not {"target_excl_akiec", "dx_code", "diagnosis", "dx_type", "target"} & set(features.columns)
    assert {"age_approx", "sex", "anatom_site_general"} <= set(features.columns)


def test_an_excluded_site_column_never_reaches_a_model(demo_table):
    """A site label (here a numeric code, and the image size of a resized set) that nearly gives the
    label away is what selection would pick; with prepare.exclude_columns it is in no fold's
    features, engineered ones included, and in no fold of the selection."""
    from lesion_ml.config import SplitConfig
    from lesion_ml.data.split import assign_folds
    from lesion_ml.tabular.prepare import clean_table, fit_transform_table

    rng = np.random.default_rng(0)
    y = demo_table["target"].to_numpy()
    site = np.where(rng.random(len(y)) < 0.9, y, 1 - y) + 1  # site 2 holds nearly every malignant lesion
    table = demo_table.assign(site_code=site, image_width=np.where(site == 2, 600, 450))
    folds = assign_folds(table, SplitConfig(n_folds=3, seed=0))
    site_columns = ("site_code", "image_width")

    def selected(exclude: tuple[str, ...]) -> set[str]:
        prep = PrepareConfig(features=ALL, exclude_columns=exclude, select=SelectConfig(k=8))
        clean = clean_table(table, prep)
        names = {n for k in range(3) for n in fit_transform_table(clean, folds, fold=k, cfg=prep)[1]}
        return names | set(clean.columns)

    assert {c for c in selected(()) if c.startswith(site_columns)}  # a shortcut that selection takes
    assert not {c for c in selected(site_columns) if any(s in c for s in site_columns)}
