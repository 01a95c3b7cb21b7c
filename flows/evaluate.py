"""Stage `evaluate`: every model's OOF predictions, the same metrics, ensembles, a stack, the report."""
from __future__ import annotations

from prefect import flow

from lesion_ml.config import load_params
from tasks import paths
from tasks.evaluate import evaluate_models


@flow(name="evaluate")
def evaluate_flow(params: str = str(paths.PARAMS)) -> dict:
    """Compare the metadata model, each image model, their ensembles and the stack on the same folds."""
    p = load_params(params)
    oof = {"gbdt": paths.GBDT_DIR / "oof.parquet"}
    oof.update({f"cnn_{name}": paths.CNN_DIR / name / "oof.parquet" for name in p.train_cnn.models})
    return evaluate_models(oof, p.evaluate, paths.LESIONS, paths.FEATURES, p.train_gbdt, paths.GBDT_DIR,
                           paths.REPORTS / "metrics.json", paths.REPORTS / "evaluation.json",
                           paths.REPORTS / "report.html", paths.OOF_SCORES, paths.CURVES)


if __name__ == "__main__":
    evaluate_flow()
