"""Stage `evaluate`: every model's OOF predictions, the same metrics -> reports/metrics.json."""
from __future__ import annotations

from prefect import flow

from lesion_ml.config import load_params
from tasks import paths
from tasks.evaluate import evaluate_models


@flow(name="evaluate")
def evaluate_flow(params: str = str(paths.PARAMS)) -> dict:
    """Compare the metadata model and each image model on the same folds."""
    p = load_params(params)
    oof = {"gbdt": paths.GBDT_DIR / "oof.parquet"}
    oof.update({f"cnn_{name}": paths.CNN_DIR / name / "oof.parquet" for name in p.train_cnn.models})
    return evaluate_models(oof, p.evaluate, paths.REPORTS / "metrics.json")


if __name__ == "__main__":
    evaluate_flow()
