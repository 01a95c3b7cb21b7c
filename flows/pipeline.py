"""Every stage in one Prefect flow, for runs without DVC: the stage flows, in the order of
dvc.yaml, as subflows (the Prefect UI shows one run with a child run per stage).

    python -m flows.pipeline [params.yaml]

Unlike `dvc repro` it skips nothing: every stage runs (image-model folds still resume from their
checkpoints in .lesion/). Use `dvc repro` (make run) to rebuild only what changed.
"""
from __future__ import annotations

import sys

from prefect import flow

from flows import paths
from flows.evaluate import evaluate_flow
from flows.final import final_flow
from flows.ingest import ingest_flow
from flows.minority_set import minority_set_flow
from flows.prepare import prepare_flow
from flows.runner import run_all, visible_gpus
from flows.split import split_flow
from flows.train_cnn import fold_calls, train_cnn_flow
from flows.train_gbdt import train_gbdt_flow
from flows.tune import tune_flow
from flows.validate import validate_flow
from lesion_ml.config import load_params
from tasks.outputs import combine_oof
from tasks.train_cnn import train_cnn_fold


@flow(name="pipeline")
def pipeline_flow(params: str = str(paths.PARAMS)) -> dict:
    """ingest -> split -> prepare -> train_gbdt -> minority_set -> train_cnn@<each model> ->
    evaluate -> final -> validate@<each external set> -> tune@<each study>. Returns what each
    stage flow returned, by stage name."""
    p = load_params(params)  # validated before any work starts
    models = list(p.train_cnn.models)
    out = {"ingest": ingest_flow(params), "split": split_flow(params), "prepare": prepare_flow(params),
           "train_gbdt": train_gbdt_flow(params), "minority_set": minority_set_flow(params)}
    if p.orchestration.task_runner == "dask":  # every fold of every backbone on the cluster at once
        calls = [c for name in models for c in fold_calls(p, name)]
        preds = run_all(train_cnn_fold, calls, p.orchestration, "train_cnn-all-folds", visible_gpus(p.train_cnn.device))
        for name in models:
            mine = [pred for call, pred in zip(calls, preds) if call["name"] == name]
            out[f"train_cnn@{name}"] = combine_oof(mine, paths.CNN_DIR / name / "oof.parquet")
    else:
        for name in models:
            out[f"train_cnn@{name}"] = train_cnn_flow(name, params)
    out["evaluate"] = evaluate_flow(params)
    out["final"] = final_flow(params)
    for name in p.external.sets:
        out[f"validate@{name}"] = validate_flow(name, params)
    for name in p.tune.studies:
        out[f"tune@{name}"] = tune_flow(name, params)
    return out


if __name__ == "__main__":
    from tasks.cache import executed

    pipeline_flow(*sys.argv[1:2])
    print(f"tasks run: {len(executed)} ({', '.join(executed) or 'none: every task was cached'})")
