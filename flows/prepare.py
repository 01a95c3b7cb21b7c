"""Stage `prepare`: clean, impute, engineer and select metadata features, fitted per training fold."""
from __future__ import annotations

from prefect import flow

from flows import paths
from lesion_ml.config import load_params
from lesion_ml.data.sources import count_metadata_columns
from tasks.prepare import clean_features, prepare_fold, write_selection
from tasks.outputs import keep_only


@flow(name="prepare")
def prepare_flow(params: str = str(paths.PARAMS)) -> dict:
    """One fitted preprocessor per fold; the selection report lists each fold's features."""
    p = load_params(params)
    keep_only(paths.FEATURES, paths.feature_files(p.split.n_folds))
    clean = paths.FEATURES / "clean.parquet"
    n_candidates = clean_features(paths.LESIONS, p.prepare, clean)
    per_fold = [prepare_fold(clean, paths.FOLDS, p.prepare, k, paths.features_path(k))
                for k in range(p.split.n_folds)]
    return write_selection(per_fold, count_metadata_columns(paths.LESIONS), n_candidates,
                           paths.REPORTS / "selection.json")


if __name__ == "__main__":
    prepare_flow()
