"""Every stage in one Prefect flow, for runs without DVC: the stage flows, in the order of
dvc.yaml, as subflows (the Prefect UI shows one run with a child run per stage).

    python -m flows.pipeline [params.yaml]

Unlike `dvc repro` it skips nothing: every stage runs (image-model folds still resume from their
checkpoints in .lesion/). Use `dvc repro` (make run) to rebuild only what changed.
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
from flows.train_cnn import train_cnn_flow
from flows.train_gbdt import train_gbdt_flow
from lesion_ml.config import load_params
from tasks import paths


@flow(name="pipeline")
def pipeline_flow(params: str = str(paths.PARAMS)) -> dict:
    """ingest -> split -> prepare -> train_gbdt -> minority_set -> train_cnn@<each model> ->
    evaluate -> final. Returns what each stage flow returned, by stage name."""
    models = list(load_params(params).train_cnn.models)  # validated before any work starts
    out = {"ingest": ingest_flow(params), "split": split_flow(params), "prepare": prepare_flow(params),
           "train_gbdt": train_gbdt_flow(params), "minority_set": minority_set_flow(params)}
    for name in models:
        out[f"train_cnn@{name}"] = train_cnn_flow(name, params)
    out["evaluate"] = evaluate_flow(params)
    out["final"] = final_flow(params)
    return out


if __name__ == "__main__":
    from tasks.cache import executed

    pipeline_flow(*sys.argv[1:2])
    print(f"tasks run: {len(executed)} ({', '.join(executed) or 'none: every task was cached'})")
