"""The whole pipeline with the shipped params on the real ISIC 2024 sample (../shared/data), laid
out as the competition ships it, run by `lesion bench scale` (every stage on its own, measured, then
`lesion predict` on every image), and then a user's own data under DVC end to end: the raw set is
`dvc add`ed under data/raw, `dvc push` carries data, models and reports to a (local) remote, and a
fresh clone that runs `dvc pull` finds every stage up to date with the same metrics.json, byte for
byte. Its own file: `make test` distributes files between two pytest-xdist workers, and this run
is one of the longest."""
from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess

import pandas as pd
import pytest
import yaml
from conftest import REPO, dvc, shared_dataset, write_competition_files

pytestmark = pytest.mark.flow

GIT = ["git", "-c", "user.name=lesion-ml tests", "-c", "user.email=tests@lesion-ml.invalid"]
# every param as shipped but the source, and the exported model: the stack, so that `lesion
# predict` runs the LightGBM model and both image networks (one decode pass)
PROFILE = {"data": {"source": "isic2024"}, "final": {"model": "stack_gbdt_images"}}


def _ok(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


@pytest.mark.slow
def test_the_real_isic2024_sample_with_shipped_params_stage_by_stage_then_under_dvc_to_a_fresh_clone(
        tmp_path, monkeypatch, prefect_api_url):
    from lesion_ml.app import bench_scale as bs

    sample = shared_dataset("isic2024-sample")
    raw = tmp_path / "isic2024"
    n = write_competition_files(sample, raw)
    import h5py

    with h5py.File(raw / "train-image.hdf5") as h5:
        first = h5[next(iter(h5))]
        assert first.shape == () and first.dtype.kind == "S"  # the competition's layout
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(PROFILE))
    monkeypatch.setenv("PREFECT_API_URL", prefect_api_url)  # the stages report to the session's server
    # the bare forward rates on 2 batches, once (the default 20 x 3 x 2 ways: 6 s a network at 64 px)
    monkeypatch.setattr(bs, "bare_forward_rate", functools.partial(bs.bare_forward_rate, batches=2, rounds=1))
    repo = tmp_path / "repo"
    result = bs.bench_scale(raw, repo, REPO, profile, predict_workers=0, predict_batch=16, out=tmp_path / "scale.json")
    assert json.loads((tmp_path / "scale.json").read_text()) == json.loads(json.dumps(result))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    assert {k: v for k, v in params.items() if k not in PROFILE} == {k: v for k, v in shipped.items() if k not in PROFILE}
    assert params["train_cnn"] == shipped["train_cnn"] and params["data"]["path"] == shipped["data"]["path"]
    _check_scale_run(result, repo, params, sample, raw)
    _check_reports(repo, sample, params, n)
    # the stage processes keyed their task results as flows/pipeline.py in this process does: a run
    # without DVC finds every one (the tiny demo build is made that way, then `dvc commit`ed)
    from flows.pipeline import pipeline_flow
    from tasks.cache import executed

    monkeypatch.chdir(repo)
    executed.clear()
    pipeline_flow()
    assert executed == []

    # the raw set under DVC: the link `lesion bench scale` made becomes the data itself, `dvc add`ed.
    # The .dvc file lands in data/raw, ingest's dependency: ingest reruns, writes the same bytes,
    # and no later stage reruns
    link = repo / params["data"]["path"]
    link.unlink()
    shutil.copytree(raw, link)
    _ok(dvc("add", str(link.relative_to(repo)), cwd=repo))
    assert (repo / "data/raw/isic2024.dvc").is_file()  # the set's hash, for git
    metrics = (repo / "reports/metrics.json").read_bytes()
    ran = re.findall(r"^Running stage '([^']+)'", _ok(dvc("repro", cwd=repo, api_url=prefect_api_url)), re.M)
    assert ran == ["ingest"] and (repo / "reports/metrics.json").read_bytes() == metrics
    remote = tmp_path / "remote"
    _ok(dvc("remote", "add", "-d", "local", str(remote), cwd=repo))

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


def _check_scale_run(result: dict, repo, params: dict, sample, raw) -> None:
    """`lesion bench scale`'s figures: every stage ran and was measured, each image model's
    out-of-fold inference and `lesion predict` are compared with the bare forward pass."""
    from lesion_ml.app.bench_scale import format_scale_table

    models = list(params["train_cnn"]["models"])
    stages = ["ingest", "split", "prepare", "train_gbdt", "minority_set", *(f"train_cnn@{m}" for m in models),
              "evaluate", "final"]
    assert [s["stage"] for s in result["stages"]] == stages
    assert all(s["returncode"] == 0 and s["ran"] and s["seconds"] > 0 and s["peak_rss_gib"] > 0.1
               for s in result["stages"])
    meta = pd.read_csv(sample / "sample_metadata.csv", usecols=["patient_id", "target"])
    n = len(meta)
    assert result["data"] == {"path": str(raw), "lesions": n,
                              "patients": int(meta["patient_id"].nunique()), "malignant": int(meta["target"].sum())}
    for name, cfg in params["train_cnn"]["models"].items():
        oof = result["oof_inference"][name]
        assert oof["images"] == n and oof["bare_forward_per_s"] > 0
        assert oof["batch_size"] == (cfg.get("eval_batch_size") or 2 * cfg["batch_size"])
    p = result["predict"]
    assert p["images"] == n and p["returncode"] == 0 and p["ratio_vs_bare"] > 0  # both CNNs, one decode pass
    assert 0 < p["image_pass_seconds"] < p["seconds"] and p["image_pass_ratio_vs_bare"] > p["ratio_vs_bare"]
    assert p["bare_forward_per_s"] == pytest.approx((p["bare_before_per_s"] + p["bare_after_per_s"]) / 2, abs=0.1)
    low, high = p["ratio_vs_bare_range"]
    assert low <= p["ratio_vs_bare"] <= high
    assert len((repo / "predictions.csv").read_text().splitlines()) == n + 1
    assert {"gbdt", "stack_gbdt_images", *(f"cnn_{m}" for m in models)} <= set(result["metrics"]["models"])
    table = format_scale_table(result)
    assert all(s in table for s in stages) and "lesion predict" in table and "of which the image pass" in table
    assert all(f"OOF inference {m}" in table for m in models)


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
