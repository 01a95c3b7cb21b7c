"""Tasks of the tune stage: open the studies, run trials (several tasks at once on a Dask runner),
score default vs tuned out of fold and write the report folder (lesion_ml.tune)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from lesion_ml.artefacts import TUNE_FILES
from lesion_ml.config import StudyConfig
from lesion_ml.config.tune import TuneBase
from lesion_ml.data.images import ImageStore
from lesion_ml.io import write_csv, write_json, write_parquet, write_text
from lesion_ml.tune.data import TuneData
from lesion_ml.tune.fit import CnnFitter, GbdtFitter, make_fitter
from lesion_ml.tune.report import study_markdown, study_report, trial_records
from lesion_ml.tune.study import run_trials, share_trials

_DATA: dict[tuple, TuneData] = {}  # per process: trial tasks of one flow run share the loaded tables


def load_tune_data(clean: Path, folds: Path) -> TuneData:
    """The study data of the clean features and the folds files, kept for the next call in this
    process while both files are unchanged."""
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in (clean, folds))
    if key not in _DATA:
        _DATA.clear()
        try:
            _DATA[key] = TuneData.from_frames(pd.read_parquet(clean), pd.read_parquet(folds))
        except ValueError as err:
            raise ValueError(f"{folds} and {clean}: {err}") from None
    return _DATA[key]


def load_fitter(*, clean: Path, folds: Path, images: Path | None, base: TuneBase,
                model: str) -> GbdtFitter | CnnFitter:
    """The fitter of a study's model on the files' data (the image store of the manifest `images`
    for an image model)."""
    store = None if images is None else ImageStore.from_manifest(json.loads(Path(images).read_text()))
    return make_fitter(load_tune_data(clean, folds), base, model=model, store=store)


@task(cache_policy=NONE)
def plan_trials(*, storage: str, name: str, study: StudyConfig, base: TuneBase, clean: Path, folds: Path,
                workers: int) -> list[dict[str, Any]]:
    """Each study's missing trials shared out over at most `workers` tasks: the study_name, outer,
    n_trials and salt of each tune_trials task."""
    batches = share_trials(storage, name, study, base=base, data=load_tune_data(clean, folds), workers=workers)
    return [asdict(b) for b in batches]


@task(cache_policy=NONE)
def tune_trials(*, storage: str, study_name: str, study: StudyConfig, base: TuneBase, clean: Path, folds: Path,
                images: Path | None, outer: int | None, n_trials: int, salt: int) -> int:
    """Run `n_trials` trials of one study (outer fold `outer`, None: all folds); they are stored as
    they finish, so a killed run loses at most the trials in flight."""
    fitter = load_fitter(clean=clean, folds=folds, images=images, base=base, model=study.model)
    return run_trials(storage, study_name, study, base=base, fitter=fitter, outer=outer, n_trials=n_trials, salt=salt)


@task(cache_policy=NONE)
def report_study(*, storage: str, name: str, study: StudyConfig, base: TuneBase, clean: Path, folds: Path,
                 images: Path | None, n_boot: int, out: Path, metrics: Path) -> dict:
    """Default vs tuned out of fold: the report folder `out` (TUNE_FILES) and the DVC metrics file
    `metrics`, published as artefacts of the flow run."""
    fitter = load_fitter(clean=clean, folds=folds, images=images, base=base, model=study.model)
    best = out / TUNE_FILES["best"]
    r = study_report(storage, name, study, base=base, data=load_tune_data(clean, folds), fitter=fitter, n_boot=n_boot,
                     best_file=best)
    write_text(r.best_yaml, best)
    write_csv(r.trials, out / TUNE_FILES["trials"])
    write_parquet(r.oof, out / TUNE_FILES["oof"])
    write_text(r.html, out / TUNE_FILES["report"])
    write_json(r.full_summary, out / TUNE_FILES["summary"])
    write_json(r.metrics, metrics)
    _publish(r.summary, r.histories["all folds"])
    return {k: r.summary[k] for k in ("default", "tuned", "best_values")}


def _publish(summary: dict, trials: pd.DataFrame) -> None:
    """The trials table and the best parameters as artefacts of the flow run (Prefect UI)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = "tune-" + "".join(c if c.isalnum() else "-" for c in summary["study"].lower())
    create_table_artifact(key=f"{key}-trials", table=trial_records(trials),
                          description="trials of the study over all folds")
    create_markdown_artifact(key=f"{key}-best", markdown=study_markdown(summary), description="default vs tuned")
