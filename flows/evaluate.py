"""Stage `evaluate`: every model's OOF predictions, the same metrics, ensembles, a stack, the report."""
from __future__ import annotations

from prefect import flow

from flows import paths
from lesion_ml.catalogue import base_models
from lesion_ml.config import load_params
from tasks.evaluate import evaluate_models


@flow(name="evaluate")
def evaluate_flow(params: str = str(paths.PARAMS)) -> dict:
    """Compare the metadata model, each image model, their ensembles and the stack on the same folds."""
    p = load_params(params)
    models = base_models(p.train_cnn.models)
    oof = {r.name: paths.GBDT_DIR / "oof.parquet" if r.kind == "gbdt" else paths.CNN_DIR / r.cnns[0] / "oof.parquet"
           for r in models}
    importance = [paths.importance_path(k) for k in range(p.split.n_folds)]
    return evaluate_models(oof, models, p.evaluate, paths.LESIONS, paths.FEATURES, p.train_gbdt, importance,
                           paths.REPORTS / "metrics.json", paths.REPORTS / "evaluation.json",
                           paths.REPORTS / "report.html", paths.OOF_SCORES, paths.CURVES)


if __name__ == "__main__":
    evaluate_flow()
