"""A fitted metadata preprocessor as plain JSON, and its application to new rows.

The final model must be loadable without unpickling (a pickle runs code when it is read), so the
fitted scikit-learn pipeline of `prepare.build_preprocessor` is exported as the arithmetic its
*selected* outputs need: per feature, the clip bounds and median of a numeric column, a
missing-value indicator, or a one-hot test of a category (with scikit-learn's "infrequent" bucket
for rare and unseen values). `apply_preprocessor` reproduces `pipe.transform` exactly (a test
checks it on training and on new rows). Only `prepare.impute: median` can be exported: the knn
and iterative imputers need the training rows at prediction time.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline

from lesion_ml.errors import DataError

FORMAT = "lesion-ml-preprocess/1"
MISSING_CATEGORY = "missing"  # the fill value of the categorical imputer


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def export_preprocessor(pipe: Pipeline, names: list[str], families: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The selected outputs of a fitted `build_preprocessor` pipeline as a JSON-ready dict.

    Args:
        pipe: the fitted pipeline (encode -> prune -> select).
        names: the selected outputs' (safe) names, in output order.
        families: the engineered feature families `clean_metadata` must add at prediction time.

    Raises:
        ValueError: the pipeline imputes with knn or iterative (not exportable).
    """
    encode = pipe.named_steps["encode"]
    outputs: list[dict[str, Any]] = []
    for name, trans, cols in encode.transformers_:
        if name == "num" and len(cols):
            clip, imp = trans.named_steps["clip"], trans.named_steps["impute"]
            if not isinstance(imp, SimpleImputer):
                raise ValueError("a final model can be exported only with prepare.impute: median (knn and "
                                 "iterative imputation need the training rows at prediction time); set "
                                 "params.yaml prepare.impute: median")
            for j, col in enumerate(cols):
                outputs.append({"kind": "value", "column": col, "lower": _finite(clip.lower_[j]),
                                "upper": _finite(clip.upper_[j]), "fill": _finite(imp.statistics_[j])})
            if imp.indicator_ is not None:
                for j in imp.indicator_.features_:
                    outputs.append({"kind": "missing", "column": cols[j]})
        elif name == "cat" and len(cols):
            onehot = trans.named_steps["onehot"]
            infrequent = getattr(onehot, "infrequent_categories_", [None] * len(cols))
            for j, col in enumerate(cols):
                rare = set() if infrequent[j] is None else {str(v) for v in infrequent[j]}
                frequent = [str(v) for v in onehot.categories_[j] if str(v) not in rare]
                outputs.extend({"kind": "category", "column": col, "value": v} for v in frequent)
                if rare:
                    outputs.append({"kind": "other", "column": col, "frequent": frequent})
    keep = pipe.named_steps["prune"].get_support()
    chosen = [o for o, k in zip(outputs, keep) if k]
    chosen = [o for o, k in zip(chosen, pipe.named_steps["select"].get_support()) if k]
    if len(chosen) != len(names):
        raise ValueError(f"{len(chosen)} exported outputs for {len(names)} selected features; the pipeline "
                         "is not the one build_preprocessor makes")
    return {"format": FORMAT, "families": list(families),
            "features": [{"name": n, **o} for n, o in zip(names, chosen)]}


def columns_needed(spec: dict[str, Any]) -> list[str]:
    """The cleaned columns (raw or engineered) the selected features are computed from."""
    return sorted({f["column"] for f in spec["features"]})


def apply_preprocessor(spec: dict[str, Any], clean: pd.DataFrame, where: str = "metadata") -> pd.DataFrame:
    """The selected features (float32, one column per `spec` feature) of `clean_metadata` output.

    Raises:
        DataError: a column the features need is absent (the message lists them and `where`).
    """
    if spec.get("format") != FORMAT:
        raise DataError(f"{where}: preprocessor format {spec.get('format')!r} is not {FORMAT!r}; "
                        "re-export the model with this version of lesion-ml")
    missing = [c for c in columns_needed(spec) if c not in clean.columns]
    if missing:
        raise DataError(f"{where}: the model's metadata features need column(s) {missing} that the metadata "
                        f"lacks; supply them (empty values are allowed and imputed)")
    out: dict[str, np.ndarray] = {}
    for f in spec["features"]:
        col = clean[f["column"]]
        if f["kind"] in ("value", "missing"):
            x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
            if f["kind"] == "missing":
                out[f["name"]] = np.isnan(x).astype(float)
                continue
            lo = -np.inf if f["lower"] is None else f["lower"]
            hi = np.inf if f["upper"] is None else f["upper"]
            x = np.clip(x, lo, hi)
            fill = np.nan if f["fill"] is None else f["fill"]
            out[f["name"]] = np.where(np.isnan(x), fill, x)
        else:
            text = col.astype(object).where(col.notna(), MISSING_CATEGORY).astype(str).to_numpy()
            if f["kind"] == "category":
                out[f["name"]] = (text == f["value"]).astype(float)
            else:
                out[f["name"]] = (~np.isin(text, f["frequent"])).astype(float)
    return pd.DataFrame(out, index=clean.index).astype("float32")
