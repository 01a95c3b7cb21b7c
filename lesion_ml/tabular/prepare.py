"""Metadata preparation: clean and engineer (stateless), then clip, impute, encode, prune and
select with a scikit-learn pipeline that is fitted on a training fold only.

`clean_metadata` never looks at labels or at other patients' statistics, so it can run on the
whole table. Everything that learns from data lives in `build_preprocessor` and is fitted per fold.
"""
from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.experimental import enable_iterative_imputer  # noqa: F401  (registers IterativeImputer)
from sklearn.impute import IterativeImputer, KNNImputer, MissingIndicator, SimpleImputer
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from lesion_ml.config import PrepareConfig
from lesion_ml.data.schema import ID_COLUMNS, is_leak_column
from lesion_ml.errors import DataError
from lesion_ml.tabular.features import engineer
from lesion_ml.tabular.select import CorrelationPruner, KBestSelector, subsample_rows

log = logging.getLogger(__name__)

SITE_ALIASES = {  # anatomic site spellings of ISIC 2019/2020 and HAM10000 -> ISIC 2024
    "anterior torso": "anterior torso", "torso": "anterior torso", "chest": "anterior torso",
    "abdomen": "anterior torso", "genital": "anterior torso", "oral/genital": "anterior torso",
    "lateral torso": "anterior torso", "posterior torso": "posterior torso", "back": "posterior torso",
    "trunk": "posterior torso", "lower extremity": "lower extremity", "foot": "lower extremity",
    "acral": "lower extremity", "palms/soles": "lower extremity", "upper extremity": "upper extremity",
    "hand": "upper extremity", "head/neck": "head/neck", "face": "head/neck", "scalp": "head/neck",
    "neck": "head/neck", "ear": "head/neck",
}
#: Known vocabularies (lower case): a value outside them is an error that lists them.
VOCABULARIES = {
    "sex": {"male": "male", "female": "female", "m": "male", "f": "female"},
    "anatom_site_general": SITE_ALIASES,
    "tbp_tile_type": {"3d: xp": "3d: xp", "3d: white": "3d: white"},
    "tbp_lv_location_simple": {v: v for v in ("torso back", "torso front", "left arm", "right arm", "left leg",
                                              "right leg", "head & neck")},
}
FREE_CATEGORIES = ("tbp_lv_location",)  # normalised (case, blanks) but open vocabularies
MISSING_TOKENS = {"", "unknown", "nan", "none", "null", "na", "n/a"}


def clean_metadata(table: pd.DataFrame, families: tuple[str, ...] = ()) -> pd.DataFrame:
    """Model inputs from the canonical table: leak and id columns removed, numbers coerced,
    categories normalised to known vocabularies, then the engineered `families` added.

    `table` is not modified. Nothing here uses labels or statistics across patients.

    Raises:
        DataError: a numeric column holds text, or a category spelling is unknown (the message
            names the column, the row, the value and the allowed set).
    """
    keep = [c for c in table.columns if not is_leak_column(c) and c not in ID_COLUMNS]
    df = table[keep].copy()
    ids = table["image_id"].to_numpy() if "image_id" in table else None

    def row(i: int) -> str:  # the image id says which CSV row, whatever rows ingest skipped
        return f"row {i} (image_id {ids[i]!r})" if ids is not None else f"row {i}"

    for col in list(df.columns):
        if col in VOCABULARIES or col in FREE_CATEGORIES:
            df[col] = _normalise_category(df[col], col, row)
        elif pd.api.types.is_bool_dtype(df[col]):
            df[col] = df[col].astype(float)
        elif not pd.api.types.is_numeric_dtype(df[col]):
            coerced = pd.to_numeric(df[col], errors="coerce")
            text = df[col].notna() & coerced.isna()
            if text.mean() > 0.5:
                df = df.drop(columns=col)  # free text (a description, a file name): not a feature
            elif text.any():
                i = int(np.flatnonzero(text.to_numpy())[0])
                raise DataError(f"column {col!r}, {row(i)}: value {df[col].iloc[i]!r} is not a number; "
                                f"{int(text.sum())} such values (fix the CSV or drop the column)")
            else:
                df[col] = coerced.astype(float)
        else:
            df[col] = df[col].astype(float)
    return engineer(df, families, table["patient_id"] if "patient_id" in table else None)


def _normalise_category(values: pd.Series, col: str, row=lambda i: f"row {i}") -> pd.Series:
    text = values.astype("string").str.strip().str.lower()
    text = text.mask(text.isin(MISSING_TOKENS))
    vocab = VOCABULARIES.get(col)
    if vocab is not None:
        unknown = text.notna() & ~text.isin(list(vocab))
        if unknown.any():
            i = int(np.flatnonzero(unknown.to_numpy())[0])
            allowed = sorted(set(vocab.values()))
            raise DataError(f"column {col!r}, {row(i)}: unknown category {values.iloc[i]!r}; allowed "
                            f"(any case): {allowed}, synonyms {sorted(set(vocab) - set(allowed))}, "
                            f"or empty/unknown for missing ({int(unknown.sum())} such values)")
        text = text.map(vocab.get, na_action="ignore")
    return text.astype(object).where(text.notna(), np.nan)


class QuantileClipper(TransformerMixin, BaseEstimator):
    """Clip each column to quantiles learned in `fit` (NaN ignored and kept)."""

    def __init__(self, low: float = 0.001, high: float = 0.999):
        self.low = low
        self.high = high

    def fit(self, X, y=None):  # noqa: N803 (scikit-learn convention)
        arr = np.asarray(X, dtype=float)
        with np.errstate(all="ignore"):
            self.lower_ = np.nan_to_num(np.nanquantile(arr, self.low, axis=0), nan=-np.inf)
            self.upper_ = np.nan_to_num(np.nanquantile(arr, self.high, axis=0), nan=np.inf)
        self.n_features_in_ = arr.shape[1]
        return self

    def transform(self, X):  # noqa: N803
        return np.clip(np.asarray(X, dtype=float), self.lower_, self.upper_)

    def get_feature_names_out(self, input_features=None):
        return np.asarray(input_features, dtype=object)


def _imputer(cfg: PrepareConfig):
    if cfg.impute == "median":
        return SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)
    if cfg.impute == "knn":
        base = Pipeline([("scale", StandardScaler()), ("knn", KNNImputer(n_neighbors=5, keep_empty_features=True))])
    else:
        base = IterativeImputer(max_iter=5, random_state=cfg.seed, keep_empty_features=True)
    return FeatureUnion([("value", base), ("missing", MissingIndicator(features="missing-only", error_on_new=False))])


def build_preprocessor(features: pd.DataFrame, cfg: PrepareConfig) -> Pipeline:
    """An unfitted pipeline: clip + impute (with missing indicators) numeric columns, one-hot
    encode categoricals, prune correlated columns, keep the `cfg.select.k` best."""
    numeric = [c for c in features.columns if pd.api.types.is_numeric_dtype(features[c])]
    categorical = [c for c in features.columns if c not in numeric]
    num_pipe = Pipeline([("clip", QuantileClipper(*cfg.clip_quantiles)), ("impute", _imputer(cfg))])
    cat_pipe = Pipeline([("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                         ("onehot", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5,
                                                  sparse_output=False))])
    encode = ColumnTransformer([("num", num_pipe, numeric), ("cat", cat_pipe, categorical)],
                               verbose_feature_names_out=False)
    s = cfg.select
    return Pipeline([("encode", encode), ("prune", CorrelationPruner(s.correlation_threshold)),
                     ("select", KBestSelector(s.method, s.k, s.max_rows, cfg.seed))])


def fit_transform_fold(features: pd.DataFrame, target: pd.Series, train: np.ndarray,
                       cfg: PrepareConfig) -> tuple[pd.DataFrame, list[str], Pipeline]:
    """Fit the preprocessor on the rows in `train` (a boolean mask; at most `cfg.fit_rows` of
    them, every positive kept) and transform every row.

    Returns:
        (all rows' selected features as float32 columns, the selected names, the fitted pipeline)
    """
    pipe = build_preprocessor(features, cfg)
    rows = np.flatnonzero(train)
    y = np.asarray(target)[rows]
    rows = rows[subsample_rows(y, cfg.fit_rows, cfg.seed)]  # quantiles and medians need no 400k rows
    pipe.fit(features.iloc[rows], np.asarray(target)[rows])
    names = safe_names(_feature_names(pipe))
    out = pd.DataFrame(pipe.transform(features), columns=names, index=features.index).astype("float32")
    return out, names, pipe



def clean_table(table: pd.DataFrame, cfg: PrepareConfig) -> pd.DataFrame:
    """The lesion table's metadata cleaned, with the engineered families of `cfg.features`
    (`clean_metadata`; no fitting, no labels), after its image_id and target columns. The columns
    of `cfg.exclude_columns` are dropped first, so no feature is made from them."""
    absent = [c for c in cfg.exclude_columns if c not in table.columns]
    if absent:
        log.info("prepare.exclude_columns: the data has no column %s (nothing to exclude)", absent)
    features = clean_metadata(table.drop(columns=[c for c in cfg.exclude_columns if c in table.columns]),
                              cfg.features)
    features.insert(0, "image_id", table["image_id"].to_numpy())
    features.insert(1, "target", table["target"].to_numpy())
    return features


def fit_transform_table(clean: pd.DataFrame, folds: pd.DataFrame, *, fold: int,
                        cfg: PrepareConfig) -> tuple[pd.DataFrame, list[str]]:
    """`fit_transform_fold` of a `clean_table`, fitted on the rows outside validation fold `fold`
    of the folds table: (every row's selected features after its image_id, the selected names)."""
    features = clean.drop(columns=["image_id", "target"])
    ids, target = clean["image_id"], clean["target"]
    fold_of = folds.set_index("image_id")["fold"].reindex(ids).to_numpy()
    selected, names, _ = fit_transform_fold(features, target, fold_of != fold, cfg)
    selected.insert(0, "image_id", ids.to_numpy())
    return selected, names


def selection_summary(per_fold: list[list[str]], n_columns: int, n_candidates: int) -> dict:
    """The selection report: the source's columns, the candidate features, how many each fold
    selected (the mean), which, and how often each feature was chosen (its share of the folds)."""
    counts = pd.Series([f for names in per_fold for f in names]).value_counts()
    return {
        "n_input_columns": n_columns,
        "n_candidate_features": n_candidates,
        "n_selected": int(np.mean([len(n) for n in per_fold])),
        "per_fold": {str(i): names for i, names in enumerate(per_fold)},
        "stability": {name: round(int(c) / len(per_fold), 3) for name, c in counts.items()},
    }

def _feature_names(pipe: Pipeline) -> list[str]:
    encode = pipe.named_steps["encode"]
    names = []
    for name, trans, cols in encode.transformers_:
        if name == "num" and len(cols):
            imp = trans.named_steps["impute"]
            if isinstance(imp, SimpleImputer):
                names += list(imp.get_feature_names_out(cols))
            else:
                missing = imp.transformer_list[1][1]
                names += list(cols) + [f"missingindicator_{cols[i]}" for i in missing.features_]
        elif name == "cat" and len(cols):
            names += list(trans.get_feature_names_out(cols))
    names = np.asarray(names, dtype=object)
    names = names[pipe.named_steps["prune"].get_support()]
    return list(names[pipe.named_steps["select"].get_support()])


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
