from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lesion_ml.data.schema import ISIC2024_COLUMNS
from lesion_ml.data.synthetic import LOCATIONS
from lesion_ml.data.synthetic_tabular import generate_metadata

SMALL = dict(n_rows=5_000, n_patients=60, malignant_fraction=0.02)


def _kind(dtype) -> str:
    if pd.api.types.is_string_dtype(dtype) or dtype == object:
        return "object"
    return str(dtype)


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return generate_metadata(**SMALL, seed=1)


@pytest.fixture(scope="module")
def medium() -> pd.DataFrame:
    return generate_metadata(n_rows=20_000, n_patients=120, malignant_fraction=0.02, seed=2)


def test_columns_and_dtypes_match_the_schema(small):
    assert list(small.columns) == list(ISIC2024_COLUMNS)
    assert {c: _kind(small[c].dtype) for c in small.columns} == ISIC2024_COLUMNS
    assert all(small[c].dtype == object for c, t in ISIC2024_COLUMNS.items() if t == "object")
    text = small["sex"].dropna()
    assert text.map(type).eq(str).all() and set(text) == {"male", "female"}


def test_rows_patients_and_exact_malignant_count(small):
    assert len(small) == SMALL["n_rows"]
    per_patient = small.groupby("patient_id").size()
    assert len(per_patient) == SMALL["n_patients"] and per_patient.min() >= 1
    assert per_patient.max() > 3 * per_patient.median()  # counts vary widely between patients
    assert small["target"].sum() == round(0.02 * 5_000)
    assert small["isic_id"].is_unique and small["isic_id"].str.fullmatch(r"ISIC_\d{7}").all()
    assert small["patient_id"].str.fullmatch(r"IP_\d{7}").all()
    # patient-level attributes are constant within a patient
    per_patient_values = small.groupby("patient_id")[["age_approx", "sex", "attribution"]].nunique(dropna=False)
    assert per_patient_values.max().max() == 1


def test_at_least_one_malignant_row_even_for_tiny_fractions():
    df = generate_metadata(n_rows=1_000, n_patients=10, malignant_fraction=1e-5, seed=0)
    assert df["target"].sum() == 1
    assert df["iddx_5"].notna().sum() == 1 and df["mel_mitotic_index"].notna().any()


def test_rejects_more_patients_than_rows():
    with pytest.raises(ValueError):
        generate_metadata(n_rows=10, n_patients=11)


def test_missingness_and_label_columns(small):
    missing = small.isna().mean()
    assert abs(missing["age_approx"] - 0.007) < 0.006
    assert abs(missing["sex"] - 0.029) < 0.012
    assert abs(missing["anatom_site_general"] - 0.014) < 0.008
    assert abs(small["lesion_id"].notna().mean() - 0.055) < 0.01
    assert small["tbp_lv_location"].eq("Unknown").equals(small["anatom_site_general"].isna())
    simple = small["tbp_lv_location"].map({k: v[0] for k, v in LOCATIONS.items()})
    assert (simple == small["tbp_lv_location_simple"]).all()
    mal, ben = small[small["target"] == 1], small[small["target"] == 0]
    assert mal["lesion_id"].notna().all()
    assert (ben["iddx_full"] == "Benign").all() and (ben["iddx_1"] == "Benign").all()
    label_only = ["iddx_2", "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index", "mel_thick_mm"]
    assert ben[label_only].isna().all().all()
    assert (mal["iddx_1"] == "Malignant").all() and mal[["iddx_2", "iddx_3"]].notna().all().all()
    assert (mal["iddx_full"].str.split("::").str[-1] ==
            mal[["iddx_5", "iddx_4", "iddx_3"]].bfill(axis=1).iloc[:, 0]).all()
    assert small["iddx_5"].notna().sum() >= 1


def test_same_seed_same_frame_other_seed_differs(small):
    pd.testing.assert_frame_equal(generate_metadata(**SMALL, seed=1), small)
    other = generate_metadata(**SMALL, seed=2)
    assert not other["isic_id"].equals(small["isic_id"])
    assert not np.allclose(other["tbp_lv_A"], small["tbp_lv_A"])


def test_colour_and_geometry_columns_are_consistent(small):
    d = small
    np.testing.assert_allclose(d["tbp_lv_C"], np.hypot(d["tbp_lv_A"], d["tbp_lv_B"]))
    np.testing.assert_allclose(d["tbp_lv_Cext"], np.hypot(d["tbp_lv_Aext"], d["tbp_lv_Bext"]))
    np.testing.assert_allclose(d["tbp_lv_H"], np.degrees(np.arctan2(d["tbp_lv_B"], d["tbp_lv_A"])))
    np.testing.assert_allclose(d["tbp_lv_Hext"], np.degrees(np.arctan2(d["tbp_lv_Bext"], d["tbp_lv_Aext"])))
    for ch in "ABL":
        diff = d[f"tbp_lv_{ch}"] - d[f"tbp_lv_{ch}ext"]
        np.testing.assert_allclose(d[f"tbp_lv_delta{ch}"], diff, atol=1e-9)
    lb = np.hypot(d["tbp_lv_deltaL"], d["tbp_lv_deltaB"])
    assert (d["tbp_lv_deltaLB"] >= lb - 1e-9).all() and (d["tbp_lv_deltaLB"] <= 1.3 * lb + 1e-9).all()
    assert (d["tbp_lv_deltaLBnorm"] <= d["tbp_lv_deltaLB"]).all()
    ratio = d["tbp_lv_perimeterMM"] ** 2 / d["tbp_lv_areaMM2"]
    np.testing.assert_allclose(d["tbp_lv_area_perim_ratio"], ratio)
    assert (ratio >= 4 * math.pi - 1e-9).all()
    fill = d["tbp_lv_areaMM2"] / (math.pi / 4 * d["clin_size_long_diam_mm"] * d["tbp_lv_minorAxisMM"])
    assert fill.between(0.5, 1.0 + 1e-9).all()
    assert (d["tbp_lv_minorAxisMM"] <= d["clin_size_long_diam_mm"] + 1e-9).all()
    assert d["clin_size_long_diam_mm"].min() >= 1.0
    for col in ["tbp_lv_nevi_confidence", "tbp_lv_dnn_lesion_confidence"]:
        assert d[col].between(0, 100).all()
    for col in ["tbp_lv_norm_border", "tbp_lv_norm_color"]:
        assert d[col].between(0, 10).all()
    assert d["tbp_lv_eccentricity"].between(0, 1).all() and d["tbp_lv_symm_2axis"].between(0, 1).all()
    assert set(d["tbp_lv_symm_2axis_angle"].unique()) <= set(range(0, 180, 5))


def test_malignant_lesions_larger_more_irregular_and_older(medium):
    means = medium.groupby("target")[["clin_size_long_diam_mm", "tbp_lv_areaMM2", "tbp_lv_perimeterMM",
                                      "tbp_lv_area_perim_ratio", "tbp_lv_color_std_mean",
                                      "tbp_lv_norm_color", "tbp_lv_symm_2axis", "age_approx"]].mean()
    assert (means.loc[1] > means.loc[0]).all(), means
    nevus = medium.groupby("target")["tbp_lv_nevi_confidence"].median()
    assert nevus.loc[1] < nevus.loc[0]
    # heavy overlap: no single column is a perfect separator
    assert roc_auc_score(medium["target"], medium["tbp_lv_area_perim_ratio"]) < 0.97


def test_patient_relative_size_separates_at_least_as_well_as_raw(medium):
    size = medium["clin_size_long_diam_mm"]
    grouped = size.groupby(medium["patient_id"])
    z = ((size - grouped.transform("mean")) / grouped.transform("std")).fillna(0.0)
    raw_auc = roc_auc_score(medium["target"], size)
    z_auc = roc_auc_score(medium["target"], z)
    assert raw_auc > 0.6
    assert z_auc >= raw_auc, (z_auc, raw_auc)
