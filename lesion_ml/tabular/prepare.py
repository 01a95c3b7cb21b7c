"""Metadata preparation: clean (stateless), then impute, clip, encode and select features with
a scikit-learn pipeline that is fitted on a training fold only.

`clean_metadata` never looks at labels or at other rows' statistics, so it can run on the whole
table. Everything that learns from data lives in `build_preprocessor` and is fitted per fold.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.feature_selection import SelectKBest, f_classif, mutual_info_classif
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from lesion_ml.config import PrepareConfig
from lesion_ml.data.schema import CATEGORICAL_COLUMNS, ID_COLUMNS, LEAK_COLUMNS
from lesion_ml.data.sources import DataError

SITE_ALIASES = {  # anatomic site spellings of ISIC 2019/2020 and HAM10000 -> ISIC 2024
    "torso": "anterior torso", "anterior torso": "anterior torso", "chest": "anterior torso",
    "abdomen": "anterior torso", "back": "posterior torso", "posterior torso": "posterior torso",
    "trunk": "posterior torso", "lower extremity": "lower extremity", "upper extremity": "upper extremity",
    "head/neck": "head/neck", "face": "head/neck", "scalp": "head/neck", "neck": "head/neck", "ear": "head/neck",
    "hand": "upper extremity", "foot": "lower extremity", "acral": "lower extremity",
    "palms/soles": "lower extremity", "genital": "anterior torso", "oral/genital": "anterior torso",
    "lateral torso": "anterior torso",
}
MISSING_TOKENS = {"", "unknown", "nan", "none", "null", "na", "n/a"}


def clean_metadata(table: pd.DataFrame) -> pd.DataFrame:
    """Model inputs from the canonical table: leak and id columns removed, numbers coerced,
    categories normalised, a few row-wise engineered features added. `table` is not modified.

    Raises:
        DataError: a numeric column holds text (names the column, the row and the value).
    """
    keep = [c for c in table.columns if c not in LEAK_COLUMNS and c not in ID_COLUMNS]
    df = table[keep].copy()
    for col in df.columns:
        if col in CATEGORICAL_COLUMNS or col == "anatom_site_general":
            df[col] = _normalise_category(df[col], col)
        elif not pd.api.types.is_numeric_dtype(df[col]):
            coerced = pd.to_numeric(df[col], errors="coerce")
            text = df[col].notna() & coerced.isna()
            if pd.api.types.is_bool_dtype(df[col]):
                df[col] = df[col].astype(float)
            elif text.any() and text.mean() > 0.5:
                df = df.drop(columns=col)  # free text (e.g. a diagnosis description): not a feature
            elif text.any():
                i = int(np.flatnonzero(text.to_numpy())[0])
                raise DataError(f"column {col!r}, row {i}: value {df[col].iloc[i]!r} is not a number; "
                                f"{int(text.sum())} such values (fix the CSV or drop the column)")
            else:
                df[col] = coerced.astype(float)
        else:
            df[col] = df[col].astype(float)
    return _engineer(df)


def _normalise_category(values: pd.Series, col: str) -> pd.Series:
    text = values.astype("string").str.strip().str.lower()
    text = text.mask(text.isin(MISSING_TOKENS))
    if col == "anatom_site_general":
        text = text.map(lambda v: SITE_ALIASES.get(v, v) if isinstance(v, str) else v)
    return text.astype(object).where(text.notna(), np.nan)


def _engineer(df: pd.DataFrame) -> pd.DataFrame:
    """Row-wise ratios that need no fitting (present only when their inputs are)."""
    def has(*cols: str) -> bool:
        return all(c in df.columns for c in cols)

    eps = 1e-6
    if has("tbp_lv_minorAxisMM", "clin_size_long_diam_mm"):
        df["fe_axis_ratio"] = df["tbp_lv_minorAxisMM"] / (df["clin_size_long_diam_mm"] + eps)
    if has("tbp_lv_perimeterMM", "tbp_lv_areaMM2"):
        df["fe_shape_index"] = df["tbp_lv_perimeterMM"] ** 2 / (4 * np.pi * df["tbp_lv_areaMM2"] + eps)
    if has("tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL"):
        df["fe_colour_contrast"] = np.sqrt(df["tbp_lv_deltaA"] ** 2 + df["tbp_lv_deltaB"] ** 2
                                           + df["tbp_lv_deltaL"] ** 2)
    if has("tbp_lv_norm_border", "tbp_lv_norm_color"):
        df["fe_border_colour"] = df["tbp_lv_norm_border"] + df["tbp_lv_norm_color"]
    if has("tbp_lv_L", "tbp_lv_Lext"):
        df["fe_lightness_ratio"] = df["tbp_lv_L"] / (df["tbp_lv_Lext"] + eps)
    return df


class QuantileClipper(BaseEstimator, TransformerMixin):
    """Clip each column to quantiles learned in `fit` (NaN ignored and kept)."""

    def __init__(self, low: float = 0.001, high: float = 0.999):
        self.low = low
        self.high = high

    def fit(self, X, y=None):  # noqa: N803 (scikit-learn convention)
        arr = np.asarray(X, dtype=float)
        self.lower_ = np.nanquantile(arr, self.low, axis=0) if len(arr) else np.zeros(arr.shape[1])
        self.upper_ = np.nanquantile(arr, self.high, axis=0) if len(arr) else np.zeros(arr.shape[1])
        self.n_features_in_ = arr.shape[1]
        return self

    def transform(self, X):  # noqa: N803
        return np.clip(np.asarray(X, dtype=float), self.lower_, self.upper_)

    def get_feature_names_out(self, input_features=None):
        return np.asarray(input_features, dtype=object)


def build_preprocessor(features: pd.DataFrame, cfg: PrepareConfig) -> Pipeline:
    """An unfitted pipeline: clip + median-impute (with missing indicators) numeric columns,
    one-hot encode categoricals, then keep the `cfg.k` best features by `cfg.method`."""
    numeric = [c for c in features.columns if pd.api.types.is_numeric_dtype(features[c])]
    categorical = [c for c in features.columns if c not in numeric]
    num_pipe = Pipeline([("clip", QuantileClipper(*cfg.clip_quantiles)),
                         ("impute", SimpleImputer(strategy="median", add_indicator=True,
                                                  keep_empty_features=True))])
    cat_pipe = Pipeline([("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                         ("onehot", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5,
                                                  sparse_output=False))])
    encode = ColumnTransformer([("num", num_pipe, numeric), ("cat", cat_pipe, categorical)],
                               verbose_feature_names_out=False)
    score = (lambda X, y: mutual_info_classif(X, y, random_state=cfg.seed)) if cfg.method == "mutual_info" \
        else f_classif
    return Pipeline([("encode", encode), ("select", SelectKBest(score, k="all"))])


def fit_transform_fold(features: pd.DataFrame, target: pd.Series, train: np.ndarray,
                       cfg: PrepareConfig) -> tuple[pd.DataFrame, list[str], Pipeline]:
    """Fit the preprocessor on the rows in `train` (a boolean mask) and transform every row.

    Returns:
        (all rows' selected features as float32 columns, the selected names, the fitted pipeline)
    """
    pipe = build_preprocessor(features, cfg)
    encode, select = pipe.named_steps["encode"], pipe.named_steps["select"]
    encoded = encode.fit_transform(features[train], target[train])
    select.set_params(k=min(cfg.k, encoded.shape[1]))
    select.fit(encoded, target[train])
    names = safe_names(pipe.get_feature_names_out())
    out = pd.DataFrame(pipe.transform(features), columns=names, index=features.index).astype("float32")
    return out, names, pipe


def safe_names(names) -> list[str]:
    """Feature names with only letters, digits and '_' (LightGBM rejects JSON characters), unique."""
    out: list[str] = []
    for name in names:
        base = re.sub(r"[^0-9A-Za-z_]+", "_", str(name)).strip("_") or "feature"
        candidate, i = base, 1
        while candidate in out:
            i += 1
            candidate = f"{base}_{i}"
        out.append(candidate)
    return out
