"""The exported threshold's promise, on patients the pipeline never saw: part of a generated
demo set's patients is held out, the pipeline runs on the rest (the metadata model, as its own
final model), and `lesion predict` scores the held-out patients with the exported model. Its
sensitivity there must be what evaluate.target_sensitivity promises, within binomial noise
(measured: 97 of 100 held-out cancers caught, the 95% binomial range around 0.95 being 90-99)."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import copy_repo, tiny_params

from lesion_ml.config import SyntheticConfig
from lesion_ml.data.synthetic import generate_synthetic

pytestmark = pytest.mark.flow

DEMO = SyntheticConfig(n_patients=400, lesions_per_patient=(4, 8), malignant_fraction=0.12, tile_px=(20, 24), seed=5)
HELD_OUT = 0.35  # of the patients


def _subset(src, dest, ids: set[str], meta: pd.DataFrame) -> None:
    """An ISIC 2024-format folder holding only the images `ids` and their metadata rows."""
    dest.mkdir(parents=True)
    with h5py.File(src / "train-image.hdf5") as a, h5py.File(dest / "train-image.hdf5", "w") as b:
        for key in sorted(ids):
            a.copy(a[key], b, key)
    meta[meta["isic_id"].isin(ids)].to_csv(dest / "train-metadata.csv", index=False)


@pytest.mark.slow
def test_the_exported_threshold_keeps_its_sensitivity_on_patients_never_seen(tmp_path, prefect_harness,
                                                                              monkeypatch):
    from scipy.stats import binom

    from flows.pipeline import pipeline_flow
    from lesion_ml.app.cli import main

    full = tmp_path / "full"
    generate_synthetic(full, DEMO)
    meta = pd.read_csv(full / "train-metadata.csv")
    patients = np.sort(meta["patient_id"].unique())
    held = set(np.random.default_rng(0).choice(patients, round(HELD_OUT * len(patients)), replace=False))
    unseen = meta["patient_id"].isin(held).to_numpy()
    _subset(full, tmp_path / "train", set(meta.loc[~unseen, "isic_id"]), meta)
    _subset(full, tmp_path / "unseen", set(meta.loc[unseen, "isic_id"]), meta)

    params = tiny_params()
    params["data"].update(source="isic2024", path=str(tmp_path / "train"))
    params["split"]["n_folds"] = 5
    params["train_gbdt"] = {**params["train_gbdt"], "n_estimators": 300, "num_leaves": 15, "min_child_samples": 10}
    params["train_cnn"]["models"] = {}
    params["train_cnn"]["minority_set"]["copies"] = 0
    params["final"] = {"model": "gbdt", "fallback": None}
    params["validate"]["sets"] = {}
    params["evaluate"]["bootstrap"] = 0
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo, params)
    monkeypatch.chdir(repo)
    pipeline_flow()

    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", "models/final", "--images", str(tmp_path / "unseen/train-image.hdf5"),
                 "--metadata", str(tmp_path / "unseen/train-metadata.csv"), "--out", str(out)]) == 0
    pred = pd.read_csv(out).merge(meta[["isic_id", "target"]], left_on="image_id", right_on="isic_id")
    assert len(pred) == unseen.sum() and (pred["status"] == "ok").all()
    positives = pred[pred["target"] == 1]
    caught, n_pos = int(positives["decision"].sum()), len(positives)
    target = params["evaluate"]["target_sensitivity"]
    lo, hi = binom.interval(0.95, n_pos, target)
    # power: with this many held-out cancers, a sensitivity of 0.85 or less falls outside the interval
    assert n_pos >= 80 and binom.cdf(lo - 1, n_pos, 0.85) > 0.5, n_pos
    oof = json.loads((repo / "reports/metrics.json").read_text())["models"]["gbdt"]
    manifest = json.loads((repo / "models/final/manifest.json").read_text())
    assert manifest["threshold"] == oof["threshold"] and oof["recall"] >= target
    assert lo <= caught <= hi, (f"held-out sensitivity {caught}/{n_pos} = {caught / n_pos:.3f} at the exported "
                                f"threshold {manifest['threshold']:.4g}; the {target} promise allows {lo:.0f}-{hi:.0f}")
