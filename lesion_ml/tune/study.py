"""Hyper-parameter tuning that does not fool itself: Optuna studies scored by patient-grouped inner
cross-validation inside each outer training fold.

A study of params.yaml `tune.studies.<name>` with K outer folds (split.n_folds) is K + 1 Optuna
studies in one database:

* `<base>-fold<k>` for each outer fold k: every trial fits on inner folds of fold k's training
  rows and is scored on the inner validation rows, so fold k's validation patients are never seen.
  Its best parameters are refitted on all of fold k's training rows and predict fold k. The K
  predictions form the tuned model's out-of-fold scores: an honest estimate of "tune, then train",
  on the same rows as every other model, comparable with the default parameters' scores.
* `<base>-all`: trials scored on the outer folds themselves; its best parameters are the ones a
  user applies (the params override file).

Feature preparation (clipping, imputation, encoding, selection) is refitted on every inner
training set, as the prepare stage fits it on every outer one. `<base>` holds a digest of the
search space, the metric, the inner folds, the untuned params and the data, so a rerun with the
same inputs continues the stored trials and a changed input starts fresh studies. The data is
lesion_ml.tune.data, the models a trial fits lesion_ml.tune.fit; what the studies found (best
values, tuned vs untuned scores, trials, importances, the report) is lesion_ml.tune.report.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from lesion_ml.config import SearchParam, StudyConfig, TuneConfig, set_dotted
from lesion_ml.config.tune import CNN_MODELS, TuneBase
from lesion_ml.evaluate.analysis import RANKING
from lesion_ml.tune.data import TuneData
from lesion_ml.tune.fit import CnnFitter, GbdtFitter

STORAGE_ENV = "LESION_TUNE_STORAGE"
FINISHED = ("COMPLETE", "PRUNED")  # trial states that count towards n_trials


def storage_url(cfg: TuneConfig, default: str) -> str:
    """The Optuna database: $LESION_TUNE_STORAGE, else params.yaml tune.storage, else `default`
    (the caller's, e.g. a SQLite file); a SQLite file's folder is created."""
    url = os.environ.get(STORAGE_ENV) or cfg.storage or default
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


def open_storage(url: str, attempts: int = 5):
    """An Optuna RDB storage with heartbeats, so that trials of a killed run are marked failed (and
    not counted) instead of staying "running" for ever; SQLite waits for its lock instead of failing
    when several workers write at once.

    A new database is created by whoever opens it first. Two processes opening it in the same
    instant (trial workers, a second machine, a dashboard) both try to write the schema version and
    one fails on its unique key; that one waits and opens the database the other created."""
    import warnings

    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental; they are what resumption needs
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=30, grace_period=90)
        except (IntegrityError, OperationalError):
            if attempt == attempts:
                raise
            time.sleep(0.2 * attempt)


def inner_folds(data: TuneData, outer: int | None, n_inner: int, seed: int) -> np.ndarray:
    """The inner fold of every row: patient-grouped, class-stratified folds of outer fold `outer`'s
    training rows, and -1 for its validation rows (never used by a trial). `outer` None: the outer
    folds themselves (the study whose best parameters are exported)."""
    if outer is None:
        return data.fold.copy()
    out = np.full(len(data.y), -1, dtype=np.int64)
    rows = np.flatnonzero(data.fold != outer)
    n_patients = len(np.unique(data.groups[rows]))
    if n_patients < n_inner:
        raise ValueError(f"outer fold {outer} leaves {n_patients} training patients, fewer than the "
                         f"{n_inner} inner folds; lower params.yaml tune.studies.<name>.inner_folds")
    sgkf = StratifiedGroupKFold(n_splits=n_inner, shuffle=True, random_state=seed)
    for j, (_, valid) in enumerate(sgkf.split(rows, data.y[rows], data.groups[rows])):
        out[rows[valid]] = j
    return out


def suggest(trial, space: dict[str, SearchParam]) -> dict[str, Any]:
    """One value per key of the search space, drawn by the trial (the Optuna parameter name is the
    params.yaml key)."""
    values = {}
    for key, d in space.items():
        if d.type == "categorical":
            values[key] = trial.suggest_categorical(key, list(d.choices))
        elif d.type == "int":
            values[key] = trial.suggest_int(key, int(d.low), int(d.high), log=d.log)
        else:
            values[key] = trial.suggest_float(key, d.low, d.high, log=d.log)
    return values


def override(values: dict[str, Any], base: TuneBase) -> dict[str, Any]:
    """The nested params.yaml override that sets `values` (for `lesion params --merge`). An override
    replaces train_cnn.models as a whole (lesion_ml.config.merge_params), so for an image model's
    keys it carries every model of `base`, with the tuned values set."""
    start = {}
    if any(k.startswith(CNN_MODELS) for k in values):
        start = {"train_cnn": {"models": {k: m.model_dump(mode="json") for k, m in base.models.items()}}}
    return set_dotted(start, values)


def _score(metric: str, y: np.ndarray, p: np.ndarray) -> float:
    return RANKING[metric](y, p) if 0 < y.sum() < len(y) else float("nan")


def objective(fitter: GbdtFitter | CnnFitter, base: TuneBase, study: StudyConfig, inner: np.ndarray) -> Callable:
    """The Optuna objective.

    The metadata model: a trial's parameters are fitted on each inner training set and scored on
    the pooled inner validation predictions; after each inner fold it reports the mean metric so
    far, so the pruner can stop a trial that falls behind. An image model (one training costs
    minutes, not seconds): trained on the inner folds but the first and scored on the first,
    reporting its validation score after every epoch to the pruner.
    """
    import optuna

    y, scope = fitter.data.y, inner >= 0
    n_inner = int(inner.max()) + 1
    scored = scored_rows(inner, y, study.score_negatives, study.seed)
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def run_gbdt(trial, params: TuneBase) -> float:
        pooled, running = np.full(len(y), np.nan), []
        for j in range(n_inner):
            valid = scored & (inner == j)
            pooled[valid] = fitter.fit_predict(params, scope & (inner != j), valid)
            running.append(_score(study.metric, y[valid], pooled[valid]))
            trial.report(float(np.nanmean(running)), j)
            if j < n_inner - 1 and trial.should_prune():
                raise optuna.TrialPruned()
        return _score(study.metric, y[scored], pooled[scored])

    def run_cnn(trial, params: TuneBase) -> float:
        key = "valid_pauc" if study.metric == "pauc_80" else "valid_auc"

        def on_epoch(epoch: int, row: dict) -> None:
            trial.report(float(row[key]), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        valid = scored & (inner == 0)
        return _score(study.metric, y[valid], fitter.fit_predict(params, scope & (inner != 0), valid, 0, on_epoch))

    def run(trial) -> float:
        trial.set_user_attr("worker", worker)  # which process ran it (trials of parallel tasks interleave)
        values = suggest(trial, study.space)
        if study.model == "gbdt":
            return run_gbdt(trial, base.with_values(values))
        monitor = {f"{CNN_MODELS}{study.model}.monitor_valid": True}  # the per-epoch inner validation score
        return run_cnn(trial, base.with_values({**values, **monitor}))

    return run


def scored_rows(inner: np.ndarray, y: np.ndarray, negatives: int | None, seed: int) -> np.ndarray:
    """The inner validation rows trials are scored on: every malignant row and at most `negatives`
    benign rows of each inner fold, drawn once (the same rows for every trial, so trials and the
    pruner compare like with like). Ranking metrics do not depend on how many benign rows there are,
    only their noise does, and with a few hundred malignant rows the positives dominate it."""
    keep = inner >= 0
    if negatives is None:
        return keep
    rng = np.random.default_rng(seed)
    for j in range(int(inner.max()) + 1):
        benign = np.flatnonzero((inner == j) & (y != 1))
        if len(benign) > negatives:
            keep[rng.choice(benign, size=len(benign) - negatives, replace=False)] = False
    return keep


def study_base(name: str, study: StudyConfig, base: TuneBase, data_digest: str) -> str:
    """`<name>-<digest>`: the digest covers everything a stored trial's value depends on."""
    relevant = {"prepare": base.prepare.model_dump(mode="json"),
                **({"train_gbdt": base.train_gbdt.model_dump(mode="json")} if study.model == "gbdt" else
                   {"cnn": base.models[study.model].model_dump(mode="json")})}
    untuned = set_dotted(relevant, {k.replace(f"{CNN_MODELS}{study.model}", "cnn"): None for k in study.space})
    key = json.dumps({"model": study.model, "space": {k: v.model_dump(mode="json") for k, v in study.space.items()},
                      "metric": study.metric, "inner_folds": study.inner_folds, "seed": study.seed,
                      "score_negatives": study.score_negatives,
                      "params": untuned, "data": data_digest}, sort_keys=True)
    return f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def study_names(base_name: str, n_folds: int) -> dict[int | None, str]:
    """Outer fold (None: all folds) -> Optuna study name (a name in the database, not a file)."""
    return {**{k: f"{base_name}-fold{k}" for k in range(n_folds)}, None: f"{base_name}-all"}


def _sampler(study: StudyConfig, salt: int):
    import optuna

    seed = study.seed * 1_000_003 + salt
    return optuna.samplers.TPESampler(seed=seed) if study.sampler == "tpe" else optuna.samplers.RandomSampler(seed)


def _pruner(study: StudyConfig):
    import optuna

    if study.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if study.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(study.inner_folds, 2))
    return optuna.pruners.NopPruner()


def load_study(storage, name: str, study: StudyConfig, salt: int = 0):
    """The Optuna study `name` (created when new), maximising the metric."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial would drown the flow's log
    return optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                               sampler=_sampler(study, salt), pruner=_pruner(study))


def finished(opt_study) -> int:
    """Trials that count towards n_trials (complete or pruned); failed and running ones do not."""
    import optuna

    states = tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED)
    return len(opt_study.get_trials(deepcopy=False, states=states))


def shares(remaining: int, workers: int) -> list[int]:
    """`remaining` trials split over at most `workers` tasks (no empty task)."""
    n = min(workers, remaining)
    return [remaining // n + (i < remaining % n) for i in range(n)] if n else []


def run_trials(storage_url_: str, name: str, study: StudyConfig, base: TuneBase, fitter: GbdtFitter | CnnFitter,
               outer: int | None, n_trials: int, salt: int = 0) -> int:
    """Run `n_trials` more trials of study `name` (outer fold `outer`); returns how many finished."""
    opt_study = load_study(open_storage(storage_url_), name, study, salt)
    before = finished(opt_study)
    inner = inner_folds(fitter.data, outer, study.inner_folds, study.seed)
    opt_study.optimize(objective(fitter, base, study, inner), n_trials=n_trials, timeout=study.timeout_s,
                       gc_after_trial=False)
    return finished(opt_study) - before


@dataclass(frozen=True)
class TrialBatch:
    """Trials of one study that one task runs: `n_trials` more of study `study_name` (outer fold
    `outer`; None: all folds), its sampler seeded with `salt`."""

    study_name: str
    outer: int | None
    n_trials: int
    salt: int


def share_trials(storage_url_: str, name: str, study: StudyConfig, base: TuneBase, data: TuneData,
                 workers: int) -> list[TrialBatch]:
    """Create (or reopen) the study of every outer fold and of all folds of study `name`, and share
    out the trials each still lacks (n_trials minus those already finished) over at most `workers`
    batches per study."""
    names = study_names(study_base(name, study, base, data.digest()), int(data.fold.max()) + 1)
    storage = open_storage(storage_url_)
    batches = []
    for outer, study_name in names.items():
        done = finished(load_study(storage, study_name, study))
        for w, n in enumerate(shares(max(study.n_trials - done, 0), workers)):
            # a sampler seed per study, worker and resume point: no two tasks replay the same draws
            salt = (outer if outer is not None else 999) * 10_007 + done * 101 + w
            batches.append(TrialBatch(study_name, outer, n, salt))
    return batches
