"""Stage `evaluate`: every model's OOF predictions, the same metrics, ensembles, a stack, the report."""
from __future__ import annotations

from prefect import flow

from lesion_ml import artefacts as cat
from lesion_ml.catalogue import base_models, derived_models
from lesion_ml.config import load_params
from tasks.evaluate import evaluate_models
from tasks.outputs import keep_only


@flow(name="evaluate")
def evaluate_flow(params: str = str(cat.PARAMS)) -> dict:
    """Compare the metadata model, each image model, their ensembles and the stack on the same folds."""
    p = load_params(params)
    models = base_models(p.train_cnn.models)
    n = p.split.n_folds
    for kind in cat.CURVE_KINDS:  # no curve of a model these params no longer evaluate (runs without DVC)
        keep_only(cat.curves(kind), [f"{r.name}.csv" for r in [*models, *derived_models(models, p.evaluate)]])
    return evaluate_models(
        oof_files={r.name: cat.GBDT_OOF if r.kind == "gbdt" else cat.cnn_oof(r.cnns[0]) for r in models},
        models=models, cfg=p.evaluate, gbdt_cfg=p.train_gbdt, lesions=cat.LESIONS,
        features=[cat.features(k) for k in range(n)], importance=[cat.importance(k) for k in range(n)],
        out_metrics=cat.METRICS, out_detail=cat.EVALUATION, out_html=cat.REPORT_HTML, out_scores=cat.OOF_SCORES,
        out_curves={k: cat.curves(k) for k in cat.CURVE_KINDS})


if __name__ == "__main__":
    evaluate_flow()
