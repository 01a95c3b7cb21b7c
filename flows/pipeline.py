"""Every stage in one Prefect flow, for runs without DVC: the stage flows, in the order of
dvc.yaml, as subflows (the Prefect UI shows one run with a child run per stage).

    python -m flows.pipeline [params.yaml]

Unlike `dvc repro` it skips nothing: every stage runs (image-model folds still resume from their
checkpoints, lesion_ml.artefacts.CHECKPOINTS). Use `dvc repro` (make run) to rebuild only what changed.
"""
from __future__ import annotations

import sys

from prefect import flow

from flows.evaluate import evaluate_flow
from flows.final import final_flow
from flows.ingest import ingest_flow
from flows.minority_set import minority_set_flow
from flows.prepare import prepare_flow
from flows.split import split_flow
from flows.train_cnn import train_cnn_flow, train_models
from flows.train_gbdt import train_gbdt_flow
from flows.tune import tune_flow
from flows.validate import validate_flow
from lesion_ml import artefacts as cat
from lesion_ml.config import load_params


@flow(name="pipeline")
def pipeline_flow(params: str = str(cat.PARAMS)) -> dict:
    """ingest -> split -> prepare -> train_gbdt -> minority_set -> train_cnn@<each model> ->
    evaluate -> final -> validate@<each external set> -> tune@<each study>. Returns what each
    stage flow returned, by stage name."""
    p = load_params(params)  # validated before any work starts
    models = list(p.train_cnn.models)
    out = {"ingest": ingest_flow(params), "split": split_flow(params), "prepare": prepare_flow(params),
           "train_gbdt": train_gbdt_flow(params), "minority_set": minority_set_flow(params)}
    if p.orchestration.task_runner == "dask":  # every fold of every backbone on the cluster at once
        out |= {f"train_cnn@{name}": oof for name, oof in train_models(p, models, "train_cnn-all-folds").items()}
    else:
        for name in models:
            out[f"train_cnn@{name}"] = train_cnn_flow(name, params)
    out["evaluate"] = evaluate_flow(params)
    out["final"] = final_flow(params)
    for name in p.validate.sets:
        out[f"validate@{name}"] = validate_flow(name, params)
    for name in p.tune.studies:
        out[f"tune@{name}"] = tune_flow(name, params)
    return out


if __name__ == "__main__":
    from tasks.cache import executed

    pipeline_flow(*sys.argv[1:2])
    print(f"tasks run: {len(executed)} ({', '.join(executed) or 'none: every task was cached'})")
