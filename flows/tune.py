"""Stage `tune@<name>`: the Optuna study params.yaml tune.studies.<name> (nested, patient-grouped CV)."""
from __future__ import annotations

import sys

from prefect import flow

from flows.runner import run_all
from lesion_ml import artefacts
from lesion_ml.config import load_params
from lesion_ml.config.tune import TuneBase
from lesion_ml.errors import ConfigError
from lesion_ml.tune.study import storage_url
from tasks.tune import plan_trials, report_study, tune_trials


@flow(name="tune")
def tune_flow(name: str, params: str = str(artefacts.PARAMS)) -> dict:
    """Run the trials the study still lacks (tune.parallel tasks per study; at once on a Dask task
    runner), then write the study's report folder (artefacts.tune_dir, its TUNE_FILES) and its DVC
    metrics (artefacts.tune_metrics: default vs tuned out of fold)."""
    p = load_params(params)
    if name not in p.tune.studies:
        raise ConfigError(f"no study {name!r} in params.yaml tune.studies; have {sorted(p.tune.studies)}")
    study = p.tune.studies[name]
    inputs = {"storage": storage_url(p.tune, default=artefacts.TUNE_STORAGE), "study": study,
              "base": TuneBase.of(p.prepare, p.train_gbdt, p.train_cnn), "clean": artefacts.CLEAN,
              "folds": artefacts.FOLDS}
    images = None if study.model == "gbdt" else artefacts.IMAGES
    batches = plan_trials(name=name, workers=p.tune.parallel, **inputs)
    run_all(tune_trials, [{**inputs, "images": images, **b} for b in batches], p.orchestration, name="tune-trials")
    return report_study(name=name, images=images, n_boot=p.tune.bootstrap, out=artefacts.tune_dir(name),
                        metrics=artefacts.tune_metrics(name), **inputs)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m flows.tune <name from params.yaml tune.studies>")
    tune_flow(sys.argv[1])
