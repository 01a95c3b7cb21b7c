"""Hyper-parameter tuning (lesion_ml/tune/study.py, flows/tune.py): honest nesting, resumable studies,
parallel trial tasks on one database, clear errors for bad search spaces."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lesion_ml.config import ConfigError, PrepareConfig, SplitConfig, apply_override, validate_params
from lesion_ml.data.split import assign_folds
from lesion_ml.data.synthetic_tabular import generate_metadata
from lesion_ml.tabular.prepare import clean_metadata, fit_transform_fold
from lesion_ml.config.tune import TuneBase
from lesion_ml.tune.data import TuneData
from lesion_ml.tune.fit import GbdtFitter
from lesion_ml.tune.report import compare
from lesion_ml.tune.study import inner_folds, objective, shares

REPO = Path(__file__).resolve().parents[1]
SPACE = {"train_gbdt.learning_rate": {"low": 0.02, "high": 0.3, "log": True},
         "train_gbdt.num_leaves": {"type": "int", "low": 3, "high": 15},
         "prepare.select.k": {"type": "int", "low": 4, "high": 12}}


def _project(root: Path, n_trials: int, parallel: int = 1, runner: str = "local", n_rows: int = 500) -> Path:
    """A project folder holding what the tune stage reads (clean features, folds) and a params.yaml
    with one small study `t` (3 outer folds, 2 inner folds, 20 trees)."""
    table = generate_metadata(n_rows, 50, 0.12, seed=3).rename(columns={"isic_id": "image_id"})
    clean = clean_metadata(table, PrepareConfig().features)
    clean.insert(0, "image_id", table["image_id"].to_numpy())
    clean.insert(1, "target", table["target"].to_numpy())
    (root / "data/processed/features").mkdir(parents=True, exist_ok=True)
    clean.to_parquet(root / "data/processed/features/clean.parquet")
    assign_folds(table, SplitConfig(n_folds=3)).to_parquet(root / "data/processed/folds.parquet")
    params = {"split": {"n_folds": 3},
              "train_gbdt": {"n_estimators": 20, "seeds": [1], "n_jobs": 1, "neg_per_pos": 5},
              "tune": {"studies": {"t": {"n_trials": n_trials, "inner_folds": 2, "space": SPACE}},
                       "storage": f"sqlite:///{root / 'optuna.db'}", "parallel": parallel, "bootstrap": 50},
              "orchestration": {"task_runner": runner, "dask_workers": 2}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _data(root: Path) -> TuneData:
    return TuneData.from_frames(pd.read_parquet(root / "data/processed/features/clean.parquet"),
                                pd.read_parquet(root / "data/processed/folds.parquet"))


def _base(params) -> TuneBase:
    """What a study reads of the params."""
    return TuneBase.of(params.prepare, params.train_gbdt, params.train_cnn)


def _studies(root: Path) -> dict[str, list]:
    """Every study in the project's database -> its trials."""
    import optuna

    url = f"sqlite:///{root / 'optuna.db'}"
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=url).get_trials(deepcopy=False)
            for s in optuna.get_all_study_summaries(url)}


def _finished_count(root: Path) -> int:
    """Finished trials in the project's database, read without writing: opening it through Optuna
    while the flow creates it would race the flow's own schema creation."""
    try:
        with closing(sqlite3.connect(f"file:{root / 'optuna.db'}?mode=ro", uri=True)) as db:
            return db.execute("SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0]
    except sqlite3.Error:  # not created yet, or its schema not yet committed
        return 0


def _finished(trials) -> list:
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]


def _run_flow(root: Path, api_url: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), PREFECT_API_URL=api_url, LESION_TUNE_STORAGE="")
    return subprocess.Popen([sys.executable, "-m", "flows.tune", "t"], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **popen)


# --- nesting: no trial sees an outer validation patient ------------------------------------------

def test_inner_folds_hold_only_the_outer_training_patients(tmp_path):
    data = _data(_project(tmp_path, 1))
    for outer in range(3):
        inner = inner_folds(data, outer, 2, seed=0)
        valid = data.fold == outer
        assert (inner[valid] == -1).all() and (inner[~valid] >= 0).all()
        inner_patients = [set(data.groups[inner == j]) for j in range(2)]
        assert not inner_patients[0] & inner_patients[1]  # patient-grouped
        assert not (inner_patients[0] | inner_patients[1]) & set(data.groups[valid])
        assert all(data.y[inner == j].sum() > 0 for j in range(2))  # stratified: positives in each
    assert (inner_folds(data, None, 2, 0) == data.fold).all()  # the exported study uses the outer folds


def test_a_trial_never_fits_or_scores_an_outer_validation_row(tmp_path):
    import optuna

    data = _data(_project(tmp_path, 1))
    params = validate_params(yaml.safe_load((tmp_path / "params.yaml").read_text()))
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    class Recording(GbdtFitter):
        def fit_predict(self, p, train, test):
            seen.append((train.copy(), test.copy()))
            return super().fit_predict(p, train, test)

    outer = 1
    inner = inner_folds(data, outer, 2, 0)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    study.optimize(objective(Recording(data), _base(params), params.tune.studies["t"], inner), n_trials=3)
    assert len(seen) == 6 and all(np.isfinite(t.value) for t in study.trials)
    outer_valid = data.fold == outer
    for train, test in seen:
        assert not (train & outer_valid).any() and not (test & outer_valid).any()
        assert not set(data.groups[train]) & set(data.groups[test])  # inner folds are patient-disjoint too


def test_the_k_best_cache_keeps_exactly_the_prepare_stage_columns(tmp_path):
    data = _data(_project(tmp_path, 1))
    fitter, scope, train = GbdtFitter(data), np.ones(len(data.y), bool), data.fold != 0
    for k in (3, 8, 30):
        cfg = PrepareConfig(select={"k": k})
        cached = fitter._features(cfg, scope, train)
        direct, names, _ = fit_transform_fold(data.features, pd.Series(data.y), train, cfg)
        assert list(cached.columns) == names
        np.testing.assert_array_equal(cached.to_numpy(), direct.to_numpy())
    assert len(fitter._cache) == 1  # three k, one preprocessing fit


# --- the comparison ---------------------------------------------------------------------------------

def test_compare_reports_no_gain_for_identical_scores_and_a_gain_for_a_better_model(tmp_path):
    data = _data(_project(tmp_path, 1))
    rng = np.random.default_rng(0)
    weak = data.y * 0.4 + rng.random(len(data.y))
    strong = data.y * 2.0 + rng.random(len(data.y))
    same = compare(data, weak, weak, 200)
    assert same["difference"]["roc_auc"]["difference"] == 0 and same["difference"]["roc_auc"]["ci95"] == [0, 0]
    better = compare(data, weak, strong, 200)
    d = better["difference"]["roc_auc"]
    assert d["difference"] > 0.1 and d["ci95"][0] > 0 and d["share_better"] == 1.0
    assert better["tuned"]["ci95"]["roc_auc"][0] <= better["tuned"]["roc_auc"] <= better["tuned"]["ci95"]["roc_auc"][1]


def test_shares_split_the_remaining_trials_without_empty_tasks():
    assert shares(7, 2) == [4, 3] and shares(1, 4) == [1] and shares(0, 2) == [] and sum(shares(40, 3)) == 40


# --- bad search spaces ----------------------------------------------------------------------------

@pytest.mark.parametrize("space, expected", [
    ({"train_gbdt.learnig_rate": {"low": 0.01, "high": 0.1}},
     ["'train_gbdt.learnig_rate' is not a tunable key of model 'gbdt'", "allowed: ", "train_gbdt.learning_rate"]),
    ({"train_gbdt.learning_rate": {"low": 0.1, "high": 0.1}}, ["empty range: low (0.1) must be below high (0.1)"]),
    ({"train_gbdt.reg_lambda": {"low": 0.0, "high": 1.0, "log": True}}, ["log scale needs low > 0, got low 0.0"]),
    ({"train_gbdt.num_leaves": {"type": "int", "low": 2.5, "high": 9}}, ["whole-number bounds"]),
    ({"prepare.select.method": {"type": "categorical", "choices": []}}, ["non-empty list of choices"]),
    ({"train_gbdt.subsample": {"low": 0.5, "high": 1.5}},
     ["tune.studies.t.space.train_gbdt.subsample: the value 1.5 is not allowed", "narrow the range"]),
    ({"train_gbdt.seeds": {"type": "int", "low": 1, "high": 3}}, ["'train_gbdt.seeds' is not a tunable key"]),
])
def test_a_bad_search_space_is_a_clear_error(space, expected):
    with pytest.raises(ConfigError) as err:
        validate_params({"tune": {"studies": {"t": {"space": space}}}})
    for text in expected:
        assert text in str(err.value)


def test_a_study_of_an_unknown_model_names_the_models():
    with pytest.raises(ConfigError, match=r"model 'resnet' is neither gbdt nor a name of train_cnn.models "
                                          r"\(\['resnet18'\]\)"):
        validate_params({"tune": {"studies": {"t": {"model": "resnet", "space": SPACE}}}})


# --- the flow: resumable, parallel, the report -----------------------------------------------------

@pytest.mark.flow
def test_a_killed_study_resumes_without_losing_or_repeating_a_trial(tmp_path, prefect_api_url):
    root = _project(tmp_path, n_trials=6)
    proc = _run_flow(root, prefect_api_url)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # kill once some trials are stored
        time.sleep(0.5)
        if _finished_count(root) >= 4:
            break
    assert proc.poll() is None, "the study finished before it could be killed:\n" + proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {n: {t.number: (t.params, t.value) for t in _finished(t)} for n, t in _studies(root).items()}
    assert 4 <= sum(map(len, before.values())) < 4 * 6  # killed mid-way: 3 outer studies + the exported one

    rerun = _run_flow(root, prefect_api_url)
    out = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, out[-3000:]
    after = _studies(root)
    assert len(after) == 4
    for name, trials in after.items():
        done = _finished(trials)
        assert len(done) == 6, (name, [(t.number, t.state.name) for t in trials])
        numbers = [t.number for t in trials]
        assert len(numbers) == len(set(numbers))
        for number, (params, value) in before.get(name, {}).items():  # none lost, none run again
            kept = next(t for t in done if t.number == number)
            assert kept.params == params and kept.value == value
    report = yaml.safe_load((root / "reports/tune/t/summary.json").read_text())
    assert set(report["per_fold"]) == {"0", "1", "2"}
    assert all(v["finished_trials"] == 6 for v in report["per_fold"].values())


@pytest.mark.flow
def test_two_dask_workers_write_one_study_without_losing_a_trial(tmp_path, prefect_harness, monkeypatch):
    root = _project(tmp_path, n_trials=6, parallel=2, runner="dask")
    monkeypatch.chdir(root)
    monkeypatch.delenv("LESION_TUNE_STORAGE", raising=False)
    from flows.tune import tune_flow

    result = tune_flow("t", params=str(root / "params.yaml"))
    studies = _studies(root)
    assert len(studies) == 4
    per_study = {}
    for name, trials in studies.items():
        assert len(_finished(trials)) == 6 and len({t.number for t in trials}) == len(trials), name
        per_study[name] = {t.user_attrs["worker"] for t in trials}
    workers = set().union(*per_study.values())
    assert len(workers) == 2 and f"{os.uname().nodename}:{os.getpid()}" not in workers  # two other processes
    # the first study's two tasks start together, one per worker; Dask may give a later study's
    # two tasks to the same worker one after the other, so only "some study" is certain
    assert any(len(w) == 2 for w in per_study.values())
    # the outputs: metrics, the override file (applied, it validates), the report, the trials
    summary = yaml.safe_load((root / "reports/tune/t.json").read_text())
    assert summary["best_values"] == result["best_values"] and set(summary["best_values"]) == set(SPACE)
    assert set(summary) == {"default", "tuned", "difference", "best_values", "n_trials"}  # dvc metrics: figures
    for label in ("default", "tuned"):
        assert 0.5 < summary[label]["roc_auc"] <= 1 and len(summary[label]["ci95"]["pauc_80"]) == 2
    merged = apply_override(root / "reports/tune/t/best.yaml", root / "params.yaml", root / "merged.yaml")
    assert merged.train_gbdt.num_leaves == summary["best_values"]["train_gbdt.num_leaves"]
    assert merged.prepare.select.k == summary["best_values"]["prepare.select.k"]
    html = (root / "reports/tune/t/report.html").read_text()
    assert "Default vs tuned, out of fold" in html and html.count("data:image/png;base64") >= 2
    trials = pd.read_csv(root / "reports/tune/t/trials.csv")
    assert len(trials) == 4 * 6 and set(trials["study"]) == {"fold 0", "fold 1", "fold 2", "all folds"}
    oof = pd.read_parquet(root / "reports/tune/t/oof.parquet")
    assert oof["tuned"].notna().all() and oof["default"].notna().all() and len(oof) == 500


# --- image models: per-epoch reports, pruning ------------------------------------------------------

def _image_study(tiny_demo):
    """A tiny image-model study on the tiny demo set: its data, fitter, params and inner folds."""
    from lesion_ml.config import DataConfig
    from lesion_ml.data.sources import ingest
    from lesion_ml.tune.fit import CnnFitter

    ing = ingest(DataConfig(source="synthetic"), tiny_demo)
    table = ing.table.reset_index(drop=True)
    folds = assign_folds(table, SplitConfig(n_folds=3, seed=1))
    data = TuneData(table["image_id"].to_numpy(), clean_metadata(table, PrepareConfig().features),
                    table["target"].to_numpy().astype(int), folds["patient_id"].astype(str).to_numpy(),
                    folds["fold"].to_numpy())
    params = validate_params({
        "split": {"n_folds": 3},
        "train_cnn": {"device": "cpu", "models": {"tiny": {"image_size": 32, "epochs": 3, "batch_size": 8}}},
        "tune": {"studies": {"img": {"model": "tiny", "inner_folds": 2, "space": {
            "train_cnn.models.tiny.lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "train_cnn.models.tiny.augment.flip": {"low": 0.0, "high": 1.0}}}}}})
    return data, CnnFitter(data, ing.store, "tiny", "cpu"), params, inner_folds(data, 0, 2, seed=0)


@pytest.mark.slow
def test_image_model_trials_report_each_epoch_and_a_pruned_trial_stops_training(tiny_demo, monkeypatch):
    import optuna

    import lesion_ml.image.train as train_module

    data, fitter, params, inner = _image_study(tiny_demo)
    epochs_run: list[int] = []
    real = train_module.train_one_epoch
    monkeypatch.setattr(train_module, "train_one_epoch", lambda *a, **k: (epochs_run.append(1), real(*a, **k))[1])
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0),
                                pruner=optuna.pruners.NopPruner())
    study.optimize(objective(fitter, _base(params), params.tune.studies["img"], inner), n_trials=2)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"] and len(epochs_run) == 6
    for t in study.trials:
        assert sorted(t.intermediate_values) == [0, 1, 2]  # one report per epoch
        assert 0 <= t.value <= 0.2 + 1e-9  # pAUC above 80 % TPR lies in [0, 0.2]
        assert t.params["train_cnn.models.tiny.lr"] != params.train_cnn.models["tiny"].lr

    epochs_run.clear()  # a pruner that stops every trial at its first report: training ends there
    pruned = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.0))
    pruned.optimize(objective(fitter, _base(params), params.tune.studies["img"], inner), n_trials=1)
    assert pruned.trials[0].state.name == "PRUNED" and list(pruned.trials[0].intermediate_values) == [0]
    assert len(epochs_run) == 1


def test_tuning_an_image_model_with_minority_copies_says_what_to_change(tmp_path):
    from lesion_ml.tune.fit import make_fitter

    params = validate_params({"train_cnn": {"models": {"m": {"balance": {"minority_set": True}}}}})
    with pytest.raises(ValueError, match=r"train_cnn.models.m.balance.minority_set: false"):
        make_fitter(_data(_project(tmp_path, 1)), _base(params), "m", store=object())


def test_the_override_of_an_image_model_keeps_the_other_models(tmp_path):
    from lesion_ml.config import merge_params
    from lesion_ml.tune.study import override

    raw = {"train_cnn": {"models": {"a": {"lr": 0.002, "epochs": 6}, "b": {"backbone": "resnet34"}}}}
    base = validate_params(raw)
    best = override({"train_cnn.models.a.lr": 0.01, "train_gbdt.num_leaves": 7}, _base(base))
    merged = validate_params(merge_params(raw, best))
    assert set(merged.train_cnn.models) == {"a", "b"} and merged.train_cnn.models["b"].backbone == "resnet34"
    assert merged.train_cnn.models["a"].lr == 0.01 and merged.train_cnn.models["a"].epochs == 6
    assert merged.train_gbdt.num_leaves == 7


def test_trials_score_every_malignant_row_and_a_fixed_sample_of_benign_ones():
    from lesion_ml.tune.study import scored_rows

    rng = np.random.default_rng(0)
    inner = rng.integers(-1, 3, 3000)
    y = (rng.random(3000) < 0.05).astype(int)
    kept = scored_rows(inner, y, 200, seed=4)
    assert not kept[inner == -1].any()  # never an outer validation row
    for j in range(3):
        fold = inner == j
        assert kept[fold & (y == 1)].all() and (kept & fold & (y == 0)).sum() == 200
    np.testing.assert_array_equal(kept, scored_rows(inner, y, 200, seed=4))  # the same rows every trial
    assert (scored_rows(inner, y, None, 4) == (inner >= 0)).all()


# --- the database: opened by several processes at once ----------------------------------------------

def test_a_storage_opened_while_another_process_creates_it_waits_and_opens(monkeypatch, tmp_path):
    """The loser of a schema-creation race gets the schema's unique-key error; it retries and opens
    the database the winner created, instead of failing the tuning run."""
    import optuna
    from sqlalchemy.exc import IntegrityError

    from lesion_ml.tune import study as study_mod

    real, calls = optuna.storages.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            real(*args, **kwargs)  # the other process wins the race and creates the schema ...
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(study_mod.time, "sleep", lambda s: None)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = study_mod.open_storage(url)
    assert len(calls) == 2 and isinstance(storage, real)
    monkeypatch.undo()
    assert optuna.create_study(storage=storage, study_name="s").study_name == "s"


def test_a_storage_that_keeps_failing_raises_after_the_last_attempt(monkeypatch, tmp_path):
    import optuna
    from sqlalchemy.exc import OperationalError

    from lesion_ml.tune import study as study_mod

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise OperationalError("CREATE TABLE", {}, Exception("database is locked"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    monkeypatch.setattr(study_mod.time, "sleep", lambda s: None)
    with pytest.raises(OperationalError, match="database is locked"):
        study_mod.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", attempts=3)
    assert len(calls) == 3
