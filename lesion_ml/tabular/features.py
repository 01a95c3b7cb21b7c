"""Feature engineering families, each switchable in params.yaml (prepare.features).

Every family is row-wise or patient-relative and never looks at labels or at statistics learned
from other patients, so it can run on the whole table before the folds are fitted: a patient is
entirely inside one fold, so within-patient statistics cannot leak across folds.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

EPS = 1e-6

#: Columns compared within each patient ("ugly duckling"): how unusual is this lesion for its owner?
PATIENT_RELATIVE_COLUMNS = (
    "clin_size_long_diam_mm", "tbp_lv_areaMM2", "tbp_lv_area_perim_ratio", "tbp_lv_color_std_mean",
    "tbp_lv_deltaLBnorm", "tbp_lv_norm_border", "tbp_lv_norm_color", "tbp_lv_radial_color_std_max",
    "tbp_lv_symm_2axis", "tbp_lv_nevi_confidence", "tbp_lv_L", "tbp_lv_A", "tbp_lv_B", "tbp_lv_H",
    "tbp_lv_stdL", "tbp_lv_eccentricity", "fe_colour_contrast", "fe_border_colour",
)


def _has(df: pd.DataFrame, *cols: str) -> bool:
    return all(c in df.columns for c in cols)


def size_shape(df: pd.DataFrame) -> dict[str, pd.Series]:
    out = {}
    if _has(df, "tbp_lv_minorAxisMM", "clin_size_long_diam_mm"):
        out["fe_axis_ratio"] = df["tbp_lv_minorAxisMM"] / (df["clin_size_long_diam_mm"] + EPS)
    if _has(df, "tbp_lv_perimeterMM", "tbp_lv_areaMM2"):
        out["fe_shape_index"] = df["tbp_lv_perimeterMM"] ** 2 / (4 * np.pi * df["tbp_lv_areaMM2"] + EPS)
        out["fe_area_perimeter"] = df["tbp_lv_areaMM2"] / (df["tbp_lv_perimeterMM"] + EPS)
    if _has(df, "tbp_lv_areaMM2", "clin_size_long_diam_mm"):
        out["fe_area_fill"] = df["tbp_lv_areaMM2"] / (np.pi / 4 * df["clin_size_long_diam_mm"] ** 2 + EPS)
    return out


def colour(df: pd.DataFrame) -> dict[str, pd.Series]:
    out = {}
    if _has(df, "tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL"):
        out["fe_colour_contrast"] = np.sqrt(df["tbp_lv_deltaA"] ** 2 + df["tbp_lv_deltaB"] ** 2
                                            + df["tbp_lv_deltaL"] ** 2)
    if _has(df, "tbp_lv_L", "tbp_lv_Lext"):
        out["fe_lightness_ratio"] = df["tbp_lv_L"] / (df["tbp_lv_Lext"] + EPS)
    if _has(df, "tbp_lv_C", "tbp_lv_Cext"):
        out["fe_chroma_ratio"] = df["tbp_lv_C"] / (df["tbp_lv_Cext"] + EPS)
    if _has(df, "tbp_lv_H", "tbp_lv_Hext"):
        out["fe_hue_contrast"] = (df["tbp_lv_H"] - df["tbp_lv_Hext"]).abs()
    if _has(df, "tbp_lv_stdL", "tbp_lv_stdLExt"):
        out["fe_lightness_std_ratio"] = df["tbp_lv_stdL"] / (df["tbp_lv_stdLExt"] + EPS)
    if _has(df, "tbp_lv_color_std_mean", "tbp_lv_radial_color_std_max"):
        out["fe_colour_uniformity"] = df["tbp_lv_color_std_mean"] / (df["tbp_lv_radial_color_std_max"] + 1)
    return out


def border(df: pd.DataFrame) -> dict[str, pd.Series]:
    out = {}
    if _has(df, "tbp_lv_norm_border", "tbp_lv_norm_color"):
        out["fe_border_colour"] = df["tbp_lv_norm_border"] + df["tbp_lv_norm_color"]
    if _has(df, "tbp_lv_symm_2axis", "tbp_lv_norm_border"):
        out["fe_asymmetry_border"] = df["tbp_lv_symm_2axis"] * df["tbp_lv_norm_border"]
    if _has(df, "tbp_lv_area_perim_ratio", "tbp_lv_eccentricity"):
        out["fe_irregular_elongated"] = df["tbp_lv_area_perim_ratio"] * df["tbp_lv_eccentricity"]
    return out


def position(df: pd.DataFrame) -> dict[str, pd.Series]:
    out = {}
    if _has(df, "tbp_lv_x", "tbp_lv_y", "tbp_lv_z"):
        out["fe_distance_from_axis"] = np.sqrt(df["tbp_lv_x"] ** 2 + df["tbp_lv_z"] ** 2)
        out["fe_body_angle"] = np.degrees(np.arctan2(df["tbp_lv_z"], df["tbp_lv_x"]))
    return out


FAMILIES: dict[str, Callable[[pd.DataFrame], dict[str, pd.Series]]] = {
    "size_shape": size_shape, "colour": colour, "border": border, "position": position,
}


def patient_relative(df: pd.DataFrame, patient_id: pd.Series) -> dict[str, pd.Series]:
    """Each listed feature's z-score and percentile rank within the patient, and the patient's
    lesion count. A patient with one lesion gets z = 0 and rank 0.5. Labels are never used."""
    groups = patient_id.to_numpy()
    out = {"fe_patient_lesion_count": patient_id.map(patient_id.value_counts()).astype(float)}
    cols = [c for c in PATIENT_RELATIVE_COLUMNS if c in df.columns]
    if not cols:
        return out
    g = df[cols].groupby(groups, sort=False)
    mean, std = g.transform("mean"), g.transform("std")
    z = ((df[cols] - mean) / (std + EPS)).fillna(0.0)
    rank = g.rank(pct=True).fillna(0.5)
    for c in cols:
        out[f"pr_z_{c}"] = z[c]
        out[f"pr_rank_{c}"] = rank[c]
    return out


def engineer(df: pd.DataFrame, families: tuple[str, ...], patient_id: pd.Series | None = None) -> pd.DataFrame:
    """Add the columns of each family in `families` (row-wise first, then "patient_relative")."""
    unknown = sorted(set(families) - set(FAMILIES) - {"patient_relative"})
    if unknown:
        raise ValueError(f"unknown feature families {unknown}; allowed: {sorted(FAMILIES) + ['patient_relative']} "
                         "(params.yaml prepare.features)")
    new: dict[str, pd.Series] = {}
    for name in families:
        if name in FAMILIES:
            new.update(FAMILIES[name](df))
    df = pd.concat([df, pd.DataFrame(new, index=df.index)], axis=1) if new else df
    if "patient_relative" in families:
        if patient_id is None:
            raise ValueError("the patient_relative family needs patient ids")
        rel = patient_relative(df, patient_id.reset_index(drop=True).set_axis(df.index))
        df = pd.concat([df, pd.DataFrame(rel, index=df.index)], axis=1)
    return df
