"""Stage `tune@<name>`: the Optuna study params.yaml tune.studies.<name> (nested, patient-grouped CV)."""
from __future__ import annotations

import sys

from prefect import flow

from flows import paths
from flows.runner import run_all
from lesion_ml.config import load_params
from lesion_ml.errors import ConfigError
from lesion_ml.tune.study import storage_url
from tasks.tune import plan_trials, report_study, tune_trials


@flow(name="tune")
def tune_flow(name: str, params: str = str(paths.PARAMS)) -> dict:
    """Run the trials the study still lacks (tune.parallel tasks per study; at once on a Dask task
    runner), then write reports/tune/<name>/ (report.html, trials.csv, oof.parquet, best.yaml) and
    reports/tune/<name>.json (the DVC metrics: default vs tuned out of fold)."""
    p = load_params(params)
    if name not in p.tune.studies:
        raise ConfigError(f"no study {name!r} in params.yaml tune.studies; have {sorted(p.tune.studies)}")
    study, storage = p.tune.studies[name], storage_url(p.tune)
    clean = paths.FEATURES / "clean.parquet"
    images = None if study.model == "gbdt" else paths.IMAGES
    calls = plan_trials(storage, name, study, p, clean, paths.FOLDS, images, p.tune.parallel)
    run_all(tune_trials, calls, p.orchestration, "tune-trials")
    return report_study(storage, name, study, p, clean, paths.FOLDS, images, p.tune.bootstrap, paths.TUNE / name,
                        paths.TUNE / f"{name}.json")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m flows.tune <name from params.yaml tune.studies>")
    tune_flow(sys.argv[1])
