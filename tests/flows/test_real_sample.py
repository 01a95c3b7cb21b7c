"""The whole pipeline with the shipped params on the real ISIC 2024 sample (../shared/data), laid
out as the competition ships it (flows/pipeline.py in process: `dvc repro`'s stage processes are
tested on the tiny demo build). Its own file: `make test` distributes files between two pytest-xdist
workers, and this run is one of the longest."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from conftest import REPO, copy_repo, shared_dataset, write_competition_files

pytestmark = pytest.mark.flow


@pytest.mark.slow
def test_the_pipeline_on_the_real_isic2024_sample_with_default_params(tmp_path, prefect_harness, monkeypatch):
    sample = shared_dataset("isic2024-sample")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = "isic2024"  # every other param as shipped
    copy_repo(tmp_path, params)
    n = write_competition_files(sample, tmp_path / params["data"]["path"])
    import h5py

    with h5py.File(tmp_path / params["data"]["path"] / "train-image.hdf5") as h5:
        first = h5[next(iter(h5))]
        assert first.shape == () and first.dtype.kind == "S"  # the competition's layout
    from sklearn.metrics import roc_auc_score

    from flows.pipeline import pipeline_flow

    monkeypatch.chdir(tmp_path)
    pipeline_flow()
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())["models"]
    image_models = {f"cnn_{name}" for name in params["train_cnn"]["models"]}
    assert set(metrics) == {"gbdt", "ensemble_mean", "ensemble_rank", "stack_gbdt_images"} | image_models
    scores = pd.read_parquet(tmp_path / "models/oof_scores.parquet")
    for name, m in metrics.items():  # the figures are those of the out-of-fold scores
        assert m["n"] == n == len(scores) and sum(map(sum, m["confusion_matrix"])) == n
        assert m["roc_auc"] == pytest.approx(roc_auc_score(scores["target"], scores[name]), abs=1e-12), name
        assert m["recall"] >= params["evaluate"]["target_sensitivity"], name
    manifest = json.loads((tmp_path / "models/final/manifest.json").read_text())
    card = (tmp_path / "models/final/MODEL_CARD.md").read_text()
    positives = int(pd.read_csv(sample / "sample_metadata.csv", usecols=["target"])["target"].sum())
    assert manifest["model"] in metrics and f"Source: isic2024; {n} images, {positives} malignant" in card
    assert "GENERATED DEMO DATA" not in card
