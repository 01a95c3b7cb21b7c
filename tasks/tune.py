"""Tasks of the tune stage: open the studies, run trials (several tasks at once on a Dask runner),
score default vs tuned out of fold and write the report (lesion_ml.tune.stage)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from lesion_ml.config import Params, StudyConfig
from lesion_ml.tune.stage import plan_calls, study_markdown, trial_records, tune_data, write_report
from lesion_ml.tune.study import make_fitter, run_trials


@task(cache_policy=NONE)
def plan_trials(storage: str, name: str, study: StudyConfig, base: Params, clean: Path, folds: Path,
                images: Path | None, workers: int) -> list[dict[str, Any]]:
    """The keyword arguments of the tune_trials tasks: each study's missing trials shared out over
    at most `workers` tasks (`plan_calls`)."""
    return plan_calls(storage, name, study, base, clean, folds, images, workers)


@task(cache_policy=NONE)
def tune_trials(storage: str, study_name: str, study: StudyConfig, base: Params, clean: Path, folds: Path,
                images: Path | None, outer: int | None, n_trials: int, salt: int) -> int:
    """Run `n_trials` trials of one study (outer fold `outer`, None: all folds); they are stored as
    they finish, so a killed run loses at most the trials in flight."""
    fitter = make_fitter(tune_data(clean, folds), base, study.model, images)
    return run_trials(storage, study_name, study, base, fitter, outer, n_trials, salt)


@task(cache_policy=NONE)
def report_study(storage: str, name: str, study: StudyConfig, base: Params, clean: Path, folds: Path,
                 images: Path | None, n_boot: int, out: Path, metrics: Path) -> dict:
    """Default vs tuned out of fold and the report folder `out` (`write_report`), published as
    artefacts of the flow run."""
    summary, trials = write_report(storage, name, study, base, clean, folds, images, n_boot, out, metrics)
    _publish(summary, trials)
    return {k: summary[k] for k in ("default", "tuned", "best_values")}


def _publish(summary: dict, trials: pd.DataFrame) -> None:
    """The trials table and the best parameters as artefacts of the flow run (Prefect UI)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = "tune-" + "".join(c if c.isalnum() else "-" for c in summary["study"].lower())
    create_table_artifact(key=f"{key}-trials", table=trial_records(trials),
                          description="trials of the study over all folds")
    create_markdown_artifact(key=f"{key}-best", markdown=study_markdown(summary), description="default vs tuned")
