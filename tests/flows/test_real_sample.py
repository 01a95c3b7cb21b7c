"""The whole pipeline with the shipped params on the real ISIC 2024 sample (../shared/data), laid
out as the competition ships it, and a user's own data under DVC end to end: the raw set is
`dvc add`ed under data/raw, `dvc repro` builds everything, `dvc push` carries data, models and
reports to a (local) remote, and a fresh clone that runs `dvc pull` finds every stage up to date
with the same metrics.json, byte for byte. Its own file: `make test` distributes files between two
pytest-xdist workers, and this run is one of the longest."""
from __future__ import annotations

import json
import os
import subprocess

import pandas as pd
import pytest
import yaml
from conftest import REPO, copy_repo, dvc, shared_dataset, write_competition_files

pytestmark = pytest.mark.flow

GIT = ["git", "-c", "user.name=lesion-ml tests", "-c", "user.email=tests@lesion-ml.invalid"]


def _ok(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


@pytest.mark.slow
def test_the_real_isic2024_sample_under_dvc_with_default_params_from_repro_to_a_fresh_clone(tmp_path,
                                                                                            prefect_api_url):
    sample = shared_dataset("isic2024-sample")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = "isic2024"  # every other param as shipped
    repo = tmp_path / "repo"
    copy_repo(repo, params)
    raw = repo / params["data"]["path"]
    n = write_competition_files(sample, raw)
    import h5py

    with h5py.File(raw / "train-image.hdf5") as h5:
        first = h5[next(iter(h5))]
        assert first.shape == () and first.dtype.kind == "S"  # the competition's layout
    _ok(dvc("add", str(raw.relative_to(repo)), cwd=repo))  # data/raw/isic2024.dvc: the set's hash, for git
    remote = tmp_path / "remote"
    _ok(dvc("remote", "add", "-d", "local", str(remote), cwd=repo))
    _ok(dvc("repro", cwd=repo, api_url=prefect_api_url))
    _check_reports(repo, sample, params, n)

    # push data, models and reports; commit the code, params, dvc.lock and the .dvc file
    _ok(dvc("push", cwd=repo))
    _ok(subprocess.run([*GIT, "add", "-A"], cwd=repo, capture_output=True, text=True))
    _ok(subprocess.run([*GIT, "commit", "-qm", "the real sample"], cwd=repo, capture_output=True, text=True))
    clone = tmp_path / "clone"
    _ok(subprocess.run(["git", "clone", "-q", str(repo), str(clone)], capture_output=True, text=True))
    assert not (clone / params["data"]["path"] / "train-image.hdf5").exists()  # the images are not in git
    _ok(dvc("pull", cwd=clone))
    assert (clone / params["data"]["path"] / "train-image.hdf5").read_bytes() == (raw / "train-image.hdf5").read_bytes()
    assert json.loads(_ok(dvc("status", "--json", cwd=clone)) or "{}") == {}  # every stage up to date
    out = _ok(dvc("repro", cwd=clone, api_url=prefect_api_url))
    assert "Running stage" not in out and "up to date" in out, out[-2000:]
    for report in ("reports/metrics.json", "reports/evaluation.json", "models/oof_scores.parquet"):
        assert (clone / report).read_bytes() == (repo / report).read_bytes(), report


def _check_reports(repo, sample, params: dict, n: int) -> None:
    """The figures of reports/metrics.json are those of the out-of-fold scores; the model card names
    the real data."""
    from sklearn.metrics import roc_auc_score

    metrics = json.loads((repo / "reports/metrics.json").read_text())["models"]
    image_models = {f"cnn_{name}" for name in params["train_cnn"]["models"]}
    assert set(metrics) == {"gbdt", "ensemble_mean", "ensemble_rank", "stack_gbdt_images"} | image_models
    scores = pd.read_parquet(repo / "models/oof_scores.parquet")
    for name, m in metrics.items():
        assert m["n"] == n == len(scores) and sum(map(sum, m["confusion_matrix"])) == n
        assert m["roc_auc"] == pytest.approx(roc_auc_score(scores["target"], scores[name]), abs=1e-12), name
        assert m["recall"] >= params["evaluate"]["target_sensitivity"], name
    manifest = json.loads((repo / "models/final/manifest.json").read_text())
    card = (repo / "models/final/MODEL_CARD.md").read_text()
    positives = int(pd.read_csv(sample / "sample_metadata.csv", usecols=["target"])["target"].sum())
    assert manifest["model"] in metrics and f"Source: isic2024; {n} images, {positives} malignant" in card
    assert "GENERATED DEMO DATA" not in card
    assert os.path.isfile(repo / "data/raw/isic2024.dvc")
