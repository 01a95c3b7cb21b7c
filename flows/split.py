"""Stage `split`: patient-grouped, stratified folds."""
from __future__ import annotations

from prefect import flow

from lesion_ml import artefacts as cat
from lesion_ml.config import load_params
from tasks.split import make_folds


@flow(name="split")
def split_flow(params: str = str(cat.PARAMS)) -> dict:
    """Assign every lesion a validation fold; no patient spans two folds."""
    return make_folds(lesions=cat.LESIONS, cfg=load_params(params).split, out=cat.FOLDS)


if __name__ == "__main__":
    split_flow()
