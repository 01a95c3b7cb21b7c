"""Smoke runs of the stage flows (in-process, one shared Prefect server) and of `dvc repro`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from conftest import REPO, TINY

pytestmark = pytest.mark.flow

TINY_PARAMS = {
    "data": {"synthetic": TINY.model_dump(mode="json")},
    "split": {"n_folds": 2, "seed": 0},
    "prepare": {"select": {"k": 8}},
    "train_gbdt": {"n_estimators": 5, "num_leaves": 4, "min_child_samples": 2, "n_jobs": 1},
    "evaluate": {"bootstrap": 50},
    "train_cnn": {"threads": 1, "minority_set": {"copies": 1, "max_side": 48},
                  "models": {"tiny": {"backbone": "resnet18", "image_size": 32, "epochs": 1, "batch_size": 8,
                                      "balance": {"minority_set": True}},
                             "tiny_fusion": {"backbone": "resnet18", "image_size": 32, "epochs": 2, "batch_size": 8,
                                             "fusion": {"enabled": True}, "monitor_valid": True,
                                             "balance": {"sampler": "downsample", "neg_per_pos": 2}}}},
}


MODELS = {"gbdt", "cnn_tiny", "cnn_tiny_fusion", "ensemble_mean", "ensemble_rank", "stack_gbdt_images"}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A copy of the repository's tracked files with tiny params, as its own git repo."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel.startswith("tests/") or not (REPO / rel).exists():
            continue
        dest = tmp_path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    params["train_cnn"]["models"] = TINY_PARAMS["train_cnn"]["models"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_stage_flows_in_process(workdir, prefect_harness):
    from flows.evaluate import evaluate_flow
    from flows.ingest import ingest_flow
    from flows.minority_set import minority_set_flow
    from flows.prepare import prepare_flow
    from flows.split import split_flow
    from flows.train_cnn import train_cnn_flow
    from flows.train_gbdt import train_gbdt_flow

    summary = ingest_flow()
    assert summary["n_images"] == len(pd.read_parquet("data/interim/lesions.parquet"))
    split_flow()
    folds = pd.read_parquet("data/processed/folds.parquet")
    assert folds.groupby("patient_id")["fold"].nunique().max() == 1
    selection = prepare_flow()
    assert selection["n_selected"] == 8 and set(selection["per_fold"]) == {"0", "1"}
    train_gbdt_flow()
    n_pos = int(folds["target"].sum())
    assert minority_set_flow() == n_pos
    train_cnn_flow("tiny")
    train_cnn_flow("tiny_fusion")
    history = pd.read_csv("reports/train_cnn/tiny_fusion/fold1.csv")
    assert list(history["epoch"]) == [1, 2] and {"valid_auc", "pos_fraction", "train_loss"} <= set(history)
    assert sorted(p.name for p in (workdir / ".lesion/checkpoints/tiny").iterdir()) == ["fold0.pt", "fold1.pt"]
    result = evaluate_flow()
    assert set(result) == MODELS
    html = (workdir / "reports/report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "stack_gbdt_images" in html
    oof = pd.read_parquet("models/gbdt/oof.parquet")
    assert sorted(oof["image_id"]) == sorted(folds["image_id"])  # every row predicted once, out of fold


def _dvc(*args: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "dvc"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_dvc_repro_end_to_end_then_noop(workdir):
    run = _dvc("repro", cwd=workdir)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    metrics = json.loads((workdir / "reports/metrics.json").read_text())["models"]
    assert set(metrics) == MODELS
    for m in metrics.values():
        assert 0.0 <= m["roc_auc"] <= 1.0 and 0.0 <= m["pauc_80"] <= 0.2
        assert sum(map(sum, m["confusion_matrix"])) == m["n"]
        assert m["recall"] >= 0.95 and set(m["ci95"]) >= {"roc_auc", "sensitivity"}  # threshold for 95% sensitivity
    # reports and plots carry counts and metrics, never a patient identifier
    patients = set(pd.read_parquet(workdir / "data/processed/folds.parquet")["patient_id"].astype(str))
    for path in (workdir / "reports").rglob("*"):
        if path.is_file():
            text = path.read_text()
            leaked = [p for p in patients if p in text]
            assert not leaked, f"{path} names patients {leaked[:3]}"
    start = time.perf_counter()
    again = _dvc("repro", cwd=workdir)
    assert again.returncode == 0 and "Data and pipelines are up to date" in again.stdout, again.stdout
    assert time.perf_counter() - start < 30
