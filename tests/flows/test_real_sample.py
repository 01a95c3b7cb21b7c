"""`dvc repro` with the shipped params on the real ISIC 2024 sample (../shared/data), laid out as
the competition ships it. Its own file: `make test` distributes files between two pytest-xdist
workers, and this run is one of the longest."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from conftest import REPO, shared_dataset, write_competition_files
from test_flows import _copy_repo, _dvc

pytestmark = pytest.mark.flow


@pytest.mark.slow
def test_dvc_repro_on_the_real_isic2024_sample_with_default_params(tmp_path, prefect_api_url):
    sample = shared_dataset("isic2024-sample")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = "isic2024"  # every other param as shipped
    _copy_repo(tmp_path, params)
    n = write_competition_files(sample, tmp_path / params["data"]["path"])
    import h5py

    with h5py.File(tmp_path / params["data"]["path"] / "train-image.hdf5") as h5:
        first = h5[next(iter(h5))]
        assert first.shape == () and first.dtype.kind == "S"  # the competition's layout
    run = _dvc("repro", cwd=tmp_path, api_url=prefect_api_url)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())["models"]
    image_models = {f"cnn_{name}" for name in params["train_cnn"]["models"]}
    assert set(metrics) == {"gbdt", "ensemble_mean", "ensemble_rank", "stack_gbdt_images"} | image_models
    for name, m in metrics.items():
        assert m["n"] == n and 0 <= m["roc_auc"] <= 1 and 0 <= m["pauc_80"] <= 0.2, name
        assert sum(map(sum, m["confusion_matrix"])) == n
    manifest = json.loads((tmp_path / "models/final/manifest.json").read_text())
    card = (tmp_path / "models/final/MODEL_CARD.md").read_text()
    positives = int(pd.read_csv(sample / "sample_metadata.csv", usecols=["target"])["target"].sum())
    assert manifest["model"] in metrics and f"Source: isic2024; {n} images, {positives} malignant" in card
    assert "GENERATED DEMO DATA" not in card
