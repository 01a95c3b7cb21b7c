"""Stage `prepare`: clean, impute, engineer and select metadata features, fitted per training fold."""
from __future__ import annotations

from prefect import flow

from lesion_ml import artefacts as cat
from lesion_ml.config import load_params
from lesion_ml.data.sources import count_metadata_columns
from tasks.outputs import keep_only
from tasks.prepare import clean_features, prepare_fold, write_selection


@flow(name="prepare")
def prepare_flow(params: str = str(cat.PARAMS)) -> dict:
    """One fitted preprocessor per fold; the selection report lists each fold's features."""
    p = load_params(params)
    keep_only(cat.FEATURES, cat.feature_files(p.split.n_folds))
    n_candidates = clean_features(lesions=cat.LESIONS, cfg=p.prepare, out=cat.CLEAN)
    per_fold = [prepare_fold(clean=cat.CLEAN, folds=cat.FOLDS, cfg=p.prepare, fold=k, out=cat.features(k))
                for k in range(p.split.n_folds)]
    return write_selection(per_fold=per_fold, n_columns=count_metadata_columns(cat.LESIONS),
                           n_candidates=n_candidates, out=cat.SELECTION)


if __name__ == "__main__":
    prepare_flow()
