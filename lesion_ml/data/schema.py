"""The ISIC 2024 (SLICE-3D) metadata schema and the canonical lesion-table contract.

The 55 train-metadata.csv columns, in file order, with the pandas dtype each has when the
official file is read with ``pd.read_csv``. Columns that exist only in training data or
encode the label are listed in LEAK_COLUMNS and never reach a model.
"""
from __future__ import annotations

ISIC2024_COLUMNS: dict[str, str] = {
    'isic_id': 'object',
    'target': 'int64',
    'patient_id': 'object',
    'age_approx': 'float64',
    'sex': 'object',
    'anatom_site_general': 'object',
    'clin_size_long_diam_mm': 'float64',
    'image_type': 'object',
    'tbp_tile_type': 'object',
    'tbp_lv_A': 'float64',
    'tbp_lv_Aext': 'float64',
    'tbp_lv_B': 'float64',
    'tbp_lv_Bext': 'float64',
    'tbp_lv_C': 'float64',
    'tbp_lv_Cext': 'float64',
    'tbp_lv_H': 'float64',
    'tbp_lv_Hext': 'float64',
    'tbp_lv_L': 'float64',
    'tbp_lv_Lext': 'float64',
    'tbp_lv_areaMM2': 'float64',
    'tbp_lv_area_perim_ratio': 'float64',
    'tbp_lv_color_std_mean': 'float64',
    'tbp_lv_deltaA': 'float64',
    'tbp_lv_deltaB': 'float64',
    'tbp_lv_deltaL': 'float64',
    'tbp_lv_deltaLB': 'float64',
    'tbp_lv_deltaLBnorm': 'float64',
    'tbp_lv_eccentricity': 'float64',
    'tbp_lv_location': 'object',
    'tbp_lv_location_simple': 'object',
    'tbp_lv_minorAxisMM': 'float64',
    'tbp_lv_nevi_confidence': 'float64',
    'tbp_lv_norm_border': 'float64',
    'tbp_lv_norm_color': 'float64',
    'tbp_lv_perimeterMM': 'float64',
    'tbp_lv_radial_color_std_max': 'float64',
    'tbp_lv_stdL': 'float64',
    'tbp_lv_stdLExt': 'float64',
    'tbp_lv_symm_2axis': 'float64',
    'tbp_lv_symm_2axis_angle': 'int64',
    'tbp_lv_x': 'float64',
    'tbp_lv_y': 'float64',
    'tbp_lv_z': 'float64',
    'attribution': 'object',
    'copyright_license': 'object',
    'lesion_id': 'object',
    'iddx_full': 'object',
    'iddx_1': 'object',
    'iddx_2': 'object',
    'iddx_3': 'object',
    'iddx_4': 'object',
    'iddx_5': 'object',
    'mel_mitotic_index': 'object',
    'mel_thick_mm': 'float64',
    'tbp_lv_dnn_lesion_confidence': 'float64',
}

#: Train-only or label-derived columns: never features, whatever params say.
LEAK_COLUMNS: frozenset[str] = frozenset({
    "target", "lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5",
    "mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence",
    "diagnosis", "diagnosis_confirm_type", "dx", "dx_type", "benign_malignant",
})

#: Name prefixes that mark a column as label-derived in any source (HAM10000's dx, dx_type; a
#: second label such as target_excl_akiec; benign_malignant; diagnosis_confirm_type; iddx_*).
LEAK_PREFIXES: tuple[str, ...] = ("target", "label", "iddx", "mel_", "diagnos", "dx", "benign_malignant")


def is_leak_column(name: str) -> bool:
    """True for columns that must never reach a model (exact names and LEAK_PREFIXES)."""
    return name in LEAK_COLUMNS or name.lower().startswith(LEAK_PREFIXES)


#: Identifiers and free text: not features by default.
ID_COLUMNS: frozenset[str] = frozenset({
    "image_id", "isic_id", "patient_id", "attribution", "copyright_license", "image_type",
    "source",
})

#: The columns every canonical lesion table starts with.
CANONICAL_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "target", "source")

NUMERIC_COLUMNS: tuple[str, ...] = tuple(
    c for c, t in ISIC2024_COLUMNS.items() if t != "object" and c not in LEAK_COLUMNS
)
CATEGORICAL_COLUMNS: tuple[str, ...] = (
    "sex", "anatom_site_general", "tbp_tile_type", "tbp_lv_location", "tbp_lv_location_simple",
)
