"""Smoke runs of the stage flows (in-process, one shared Prefect server) and of `dvc repro`."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, TINY_PARAMS, copy_build, shared_dataset  # noqa: F401 - TINY_PARAMS: other modules'
from conftest import copy_repo as _copy_repo
from conftest import dvc as _dvc
from conftest import tiny_params as _tiny_params

pytestmark = pytest.mark.flow

MODELS = {"gbdt", "cnn_tiny", "cnn_tiny_fusion", "ensemble_mean", "ensemble_rank", "stack_gbdt_images"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, demo_build, prefect_harness):
    """flows/pipeline.py (every stage flow as a subflow) run in process, with the session's Prefect
    server, on a copy of the tiny demo build: its tasks find their results in the content-keyed
    cache that the build's run left (relocated to the copy); yields the folder and what each stage
    flow returned."""
    from flows.pipeline import pipeline_flow
    from tasks.cache import executed

    root = copy_build(demo_build, tmp_path_factory.mktemp("pipeline"))
    here = os.getcwd()
    os.chdir(root)
    try:
        executed.clear()
        out = pipeline_flow()
        ran = list(executed)
    finally:
        os.chdir(here)
    yield root, out, ran


def test_a_run_without_dvc_keeps_no_curve_of_a_model_it_no_longer_evaluates(pipeline):
    """The build's repository was copied with the shipped params' reports, whose curve folders
    hold cnn_resnet18.csv and the rest; DVC would delete an out before its stage, a run of
    flows/pipeline.py does not, so evaluate removes what the current models do not write."""
    workdir, _, _ = pipeline
    assert (REPO / "reports/curves/roc/cnn_resnet18.csv").is_file()  # what the copy started with
    for kind in ("roc", "pr"):
        assert {f.stem for f in (workdir / "reports/curves" / kind).glob("*.csv")} == MODELS, kind


def test_stage_flows_in_process(pipeline):
    workdir, out, ran = pipeline
    assert ran == []  # every task found its result in the cache that the build left, in a copied project
    assert list(out) == ["ingest", "split", "prepare", "train_gbdt", "minority_set", "train_cnn@tiny",
                         "train_cnn@tiny_fusion", "evaluate", "final", "validate@demo"]
    ext = json.loads((workdir / "reports/external/demo.json").read_text())
    assert out["validate@demo"] == ext and ext["n_images"] == out["ingest"]["n_images"]
    assert (workdir / "reports/external/demo/report.html").is_file()
    assert out["ingest"]["n_images"] == len(pd.read_parquet(workdir / "data/interim/lesions.parquet"))
    folds = pd.read_parquet(workdir / "data/processed/folds.parquet")
    assert folds.groupby("patient_id")["fold"].nunique().max() == 1
    selection = out["prepare"]
    assert selection["n_selected"] == 8 and set(selection["per_fold"]) == {"0", "1"}
    n_pos = int(folds["target"].sum())
    assert out["minority_set"] == n_pos
    history = pd.read_csv(workdir / "reports/train_cnn/tiny_fusion/fold1.csv")
    assert list(history["epoch"]) == [1, 2] and {"valid_auc", "pos_fraction", "train_loss"} <= set(history)
    assert sorted(p.name for p in (workdir / ".lesion/checkpoints/tiny").iterdir()) == ["fold0.pt", "fold1.pt"]
    assert set(out["evaluate"]) == MODELS
    html = (workdir / "reports/report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "stack_gbdt_images" in html
    oof = pd.read_parquet(workdir / "models/gbdt/oof.parquet")
    assert sorted(oof["image_id"]) == sorted(folds["image_id"])  # every row predicted once, out of fold
    for kind, cols in (("roc", ["fpr", "tpr"]), ("pr", ["recall", "precision"])):
        curve = pd.read_csv(workdir / f"reports/curves/{kind}/stack_gbdt_images.csv")
        assert list(curve.columns) == cols and curve[cols[0]].between(0, 1).all() and len(curve) >= 3
    scores = pd.read_parquet(workdir / "models/oof_scores.parquet")
    assert {"stack_gbdt_images", "stack_gbdt_images__raw", "cnn_tiny__raw"} <= set(scores.columns)


def test_final_bundle_is_the_chosen_model_with_its_oof_threshold(pipeline):
    workdir, out, _ = pipeline
    bundle = workdir / "models/final"
    manifest = json.loads((bundle / "manifest.json").read_text())
    metrics = json.loads((workdir / "reports/metrics.json").read_text())["models"]
    assert out["final"]["model"] == manifest["model"] == "stack_gbdt_images"
    assert manifest["combine"] == "stack" and manifest["components"] == ["cnn_tiny", "cnn_tiny_fusion"]
    assert manifest["threshold"] == metrics["stack_gbdt_images"]["threshold"]
    assert manifest["fallback"]["threshold"] == metrics["cnn_tiny"]["threshold"]
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        ["MODEL_CARD.md", "manifest.json", "preprocess.json", "cnn_tiny.safetensors", "cnn_tiny_fusion.safetensors"]
        + [f"stack_seed{s}.txt" for s in (42, 43, 44)])
    card = (bundle / "MODEL_CARD.md").read_text()
    ci = metrics["stack_gbdt_images"]["ci95"]["roc_auc"]
    assert f"{ci[0]:.3f} to {ci[1]:.3f}" in card and "GENERATED DEMO DATA" in card and "## Subgroups" in card
    from safetensors.torch import load_file

    for f in bundle.glob("*.safetensors"):  # tensors only, no pickle
        state = load_file(f)
        assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    for f in bundle.iterdir():  # no file of the bundle is a pickle (protocol 2+ starts with 0x80)
        assert not f.read_bytes().startswith(b"\x80"), f
    assert manifest["combiner"]["kind"] == "stack" and manifest["combiner"]["files"] == [
        f"stack_seed{s}.txt" for s in (42, 43, 44)]
    preprocess = json.loads((bundle / "preprocess.json").read_text())
    assert len(preprocess["features"]) == 8


def _predict(*argv: str) -> int:
    from lesion_ml.app.cli import main

    return main(["predict", *argv])


def test_predict_isic2024_sample_with_its_metadata(pipeline, tmp_path):
    sample = shared_dataset("isic2024-sample")
    bundle = pipeline[0] / "models/final"
    out = tmp_path / "pred.csv"
    assert _predict("--model", str(bundle), "--images", str(sample / "images"), "--metadata",
                    str(sample / "sample_metadata.csv"), "--out", str(out)) == 0
    pred = pd.read_csv(out)
    truth = pd.read_csv(sample / "sample_metadata.csv", usecols=["isic_id"])
    assert sorted(pred["image_id"]) == sorted(truth["isic_id"])  # one row per image
    assert (pred["model"] == "stack_gbdt_images").all() and (pred["status"] == "ok").all()
    assert pred["probability"].between(0, 1).all() and pred["probability"].nunique() > 1
    assert ((pred["probability"] >= pred["threshold"]) == (pred["decision"] == 1)).all()
    # the decision in words is named as a prediction, never like a ground-truth label
    assert list(pred.columns) == ["image_id", "probability", "decision", "predicted_class", "threshold", "model",
                                  "status"]
    assert (pred["predicted_class"] == pred["decision"].map({1: "malignant", 0: "benign"})).all()


def test_predict_metadata_model_without_metadata_uses_the_image_only_fallback(pipeline, tmp_path):
    ham = shared_dataset("ham10000-400")
    out = tmp_path / "pred.csv"
    assert _predict("--model", str(pipeline[0] / "models/final"), "--images", str(ham / "images"), "--tta",
                    "--batch-size", "100", "--out", str(out)) == 0
    pred = pd.read_csv(out)
    assert len(pred) == 400 and pred["image_id"].is_unique
    assert (pred["model"] == "cnn_tiny (image-only fallback)").all()
    manifest = json.loads((pipeline[0] / "models/final/manifest.json").read_text())
    assert (pred["threshold"] == manifest["fallback"]["threshold"]).all()


def test_predict_png_grayscale_and_large_images(pipeline, tmp_path):
    import cv2

    from lesion_ml.data.images import ImageStore

    store = ImageStore(hdf5=pipeline[0] / "data/interim/demo/train-image.hdf5")
    ids = sorted(store.ids())[:3]
    rgb = [store.get(i) for i in ids]
    files = [tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.jpg"]
    cv2.imwrite(str(files[0]), rgb[0][:, :, ::-1])
    cv2.imwrite(str(files[1]), cv2.cvtColor(rgb[1], cv2.COLOR_RGB2GRAY))  # one channel
    cv2.imwrite(str(files[2]), cv2.resize(rgb[2], (3000, 2250))[:, :, ::-1])
    assert cv2.imread(str(files[1]), cv2.IMREAD_UNCHANGED).ndim == 2
    out = tmp_path / "pred.csv"
    assert _predict("--model", str(pipeline[0] / "models/final"), "--images", *map(str, files),
                    "--out", str(out)) == 0
    pred = pd.read_csv(out)
    assert list(pred["image_id"]) == ["a", "b", "c"] and pred["probability"].between(0, 1).all()
    # the image-only model gives the PNG the score of the stored original (lossless copy)
    from lesion_ml.model.bundle import FinalModel
    from lesion_ml.model.predict import prepare_inputs, score_images

    model = FinalModel.load(pipeline[0] / "models/final")
    direct, _ = score_images(model, "cnn_tiny", store, ids[:1], None, torch.device("cpu"))
    inputs = prepare_inputs(model, [files[0]], None)
    via_png, _ = score_images(model, "cnn_tiny", inputs.store, inputs.image_ids, None, torch.device("cpu"))
    assert abs(float(direct[0]) - float(via_png[0])) < 1e-5


def test_predict_unreadable_image_is_an_error_or_a_reported_row(pipeline, tmp_path, capsys):
    good, bad = tmp_path / "good.png", tmp_path / "broken.jpg"
    import cv2
    import numpy as np

    cv2.imwrite(str(good), np.full((60, 60, 3), 120, np.uint8))
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "pred.csv"
    model = str(pipeline[0] / "models/final")
    assert _predict("--model", model, "--images", str(good), str(bad), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "rerun with --skip-bad" in err and "params.yaml" not in err and not out.exists()
    from lesion_ml.app.cli import main

    assert main(["explain", "--model", model, "--images", str(good), str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "leave it out of --images" in err and "params.yaml" not in err
    assert _predict("--model", model, "--images", str(good), "--metadata", str(tmp_path / "none.csv"),
                    "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "none.csv: no such file (--metadata)" in err and "params.yaml" not in err
    assert _predict("--model", model, "--images", str(good), str(bad), "--skip-bad", "--out", str(out)) == 0
    pred = pd.read_csv(out).set_index("image_id")
    assert pred.loc["good", "status"] == "ok" and pred.loc["broken", "status"].startswith("unreadable")
    assert pd.isna(pred.loc["broken", "probability"])


def test_predict_without_metadata_or_fallback_is_refused(pipeline, tmp_path, capsys):
    bundle = tmp_path / "final"
    shutil.copytree(pipeline[0] / "models/final", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["fallback"] = None
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    images = pipeline[0] / "data/interim/demo/train-image.hdf5"
    assert _predict("--model", str(bundle), "--images", str(images), "--out", str(tmp_path / "p.csv")) == 2
    err = capsys.readouterr().err
    assert "needs metadata: pass --metadata" in err and "params.yaml" not in err
    meta = pd.read_csv(pipeline[0] / "data/interim/demo/train-metadata.csv")
    needed = sorted({f["column"] for f in json.loads((bundle / "preprocess.json").read_text())["features"]})
    raw = [c for c in needed if c in meta.columns]  # a needed column as it is in the CSV, else the
    drop = raw[:1] or [c for c in meta.columns if c.startswith("tbp_lv_")]  # sources of engineered ones
    meta.drop(columns=drop).to_csv(tmp_path / "m.csv", index=False)
    assert _predict("--model", str(bundle), "--images", str(images), "--metadata", str(tmp_path / "m.csv"),
                    "--out", str(tmp_path / "p.csv")) == 2
    err = capsys.readouterr().err
    assert "m.csv" in err and "lacks" in err and (not raw or drop[0] in err)
    assert not (tmp_path / "p.csv").exists()


def test_explain_writes_gradcam_overlays_and_metadata_contributions(pipeline, tmp_path):
    from lesion_ml.app.cli import main

    root = pipeline[0]
    out = tmp_path / "explain"
    assert main(["explain", "--model", str(root / "models/final"), "--images",
                 str(root / "data/interim/demo/train-image.hdf5"), "--metadata",
                 str(root / "data/interim/demo/train-metadata.csv"), "--limit", "3", "--out", str(out)]) == 0
    cams = pd.read_csv(out / "gradcam.csv")
    import numpy as np

    assert cams["probability"].between(0, 1).all()
    assert len(cams) == 6 and set(cams["component"]) == {"cnn_tiny", "cnn_tiny_fusion"}  # 3 images x 2 models
    import cv2

    for name in cams["heatmap"]:  # the tiny models see 32 px; the picture is readable anyway
        png = cv2.imread(str(out / name))[:, :, ::-1]
        assert png.shape[0] > 256 and png.shape[1] >= 2 * 256 and png.shape[2] == 3
        image, heat = png[:256, :256].astype(int), png[:256, -256:].astype(int)
        assert image.std() > 0 and np.abs(image - heat).mean() > 5  # the original, and the overlay beside it
        assert (png[256:] < 100).any()  # the caption (dark text below the pictures)
    contrib = pd.read_csv(out / "metadata_contributions.csv")
    assert contrib["image_id"].nunique() == 3 and (contrib["rank"] <= 5).all()
    stack_columns = json.loads((root / "models/final/manifest.json").read_text())["combiner"]["columns"]
    assert set(contrib["feature"]) <= set(stack_columns)
    assert (out / "feature_importance.png").stat().st_size > 1000


def test_predict_tta_is_the_mean_over_the_eight_views(pipeline, tmp_path):
    """`--tta` scores each image as the mean of its 8 flips and quarter turns: the same as scoring
    the 8 views, written as lossless files, without it (and not the same as one view)."""
    import cv2
    import numpy as np

    sample = shared_dataset("isic2024-sample")
    originals, views = tmp_path / "originals", tmp_path / "views"
    originals.mkdir()
    views.mkdir()
    for f in sorted((sample / "images").glob("*.jpg"))[:4]:
        image = cv2.imread(str(f))
        side = min(image.shape[:2])
        image = np.ascontiguousarray(image[:side, :side])  # square: every view has the same shape
        cv2.imwrite(str(originals / f"{f.stem}.png"), image)
        for k in range(4):
            turned = np.rot90(image, k)
            cv2.imwrite(str(views / f"{f.stem}_r{k}.png"), turned)
            cv2.imwrite(str(views / f"{f.stem}_r{k}f.png"), turned[:, ::-1])
    bundle = str(pipeline[0] / "models/final")
    for name, folder, extra in [("plain", originals, []), ("tta", originals, ["--tta"]), ("views", views, [])]:
        assert _predict("--model", bundle, "--images", str(folder), *extra, "--out", str(tmp_path / f"{name}.csv")) == 0
    plain, tta = (pd.read_csv(tmp_path / f"{n}.csv").set_index("image_id")["probability"] for n in ("plain", "tta"))
    by_view = pd.read_csv(tmp_path / "views.csv")
    mean = by_view.groupby(by_view["image_id"].str.rsplit("_r", n=1).str[0])["probability"].mean()
    assert (by_view.groupby(by_view["image_id"].str.rsplit("_r", n=1).str[0]).size() == 8).all()
    np.testing.assert_allclose(tta.sort_index(), mean.sort_index(), atol=2e-3)
    assert (tta - plain).abs().max() > 1e-4  # the flag changed the scores


def test_predict_mixed_scores_rows_with_metadata_by_the_model_and_the_rest_by_the_fallback(pipeline, tmp_path):
    """Metadata for half the images: those get the bundle's model and the same scores as when every
    image has its row; the others the image-only fallback and the same scores as without metadata."""
    sample = shared_dataset("isic2024-sample")
    bundle = str(pipeline[0] / "models/final")
    meta = pd.read_csv(sample / "sample_metadata.csv")
    half = meta.iloc[: len(meta) // 2]
    half.to_csv(tmp_path / "half.csv", index=False)
    runs = {"all": ["--metadata", str(sample / "sample_metadata.csv")], "half": ["--metadata", str(tmp_path / "half.csv")],
            "none": []}
    out = {}
    for name, extra in runs.items():
        assert _predict("--model", bundle, "--images", str(sample / "images"), *extra,
                        "--out", str(tmp_path / f"{name}.csv")) == 0
        out[name] = pd.read_csv(tmp_path / f"{name}.csv").set_index("image_id")
    mixed = out["half"]
    with_row = mixed.index.isin(half["isic_id"])
    assert with_row.sum() == len(half) and (~with_row).sum() == len(meta) - len(half)
    assert (mixed.loc[with_row, "model"] == "stack_gbdt_images").all()
    assert (mixed.loc[~with_row, "model"] == "cnn_tiny (image-only fallback)").all()
    for rows, ref in [(with_row, out["all"]), (~with_row, out["none"])]:
        ids = mixed.index[rows]
        pd.testing.assert_series_equal(mixed.loc[ids, "probability"], ref.loc[ids, "probability"], atol=1e-6)
        assert (mixed.loc[ids, "threshold"] == ref.loc[ids, "threshold"]).all()
    assert mixed.loc[with_row, "threshold"].iloc[0] != mixed.loc[~with_row, "threshold"].iloc[0]  # two thresholds


def _fold_files(root: Path) -> dict[str, list[str]]:
    """Every per-fold file of the stage outputs that persist between runs, by folder."""
    out = {}
    for rel in ("data/processed/features", "models/gbdt", "models/cnn/tiny", "models/cnn/tiny_fusion",
                "reports/train_cnn/tiny", "reports/train_cnn/tiny_fusion"):
        out[rel] = sorted(p.name for p in (root / rel).iterdir() if re.search(r"fold\d", p.name))
    return out


def test_lowering_n_folds_leaves_no_file_of_a_fold_that_no_longer_exists(pipeline, tmp_path, monkeypatch):
    """3 folds, then back to 2: every persisted output holds the files of folds 0 and 1 only, and
    the report's feature importances average those two folds (a stale fold's file would be read
    back by a glob and committed to the DVC cache)."""
    from flows.evaluate import evaluate_flow
    from flows.prepare import prepare_flow
    from flows.split import split_flow
    from flows.train_cnn import train_cnn_flow
    from flows.train_gbdt import train_gbdt_flow

    root = tmp_path / "copy"
    shutil.copytree(pipeline[0], root, symlinks=True)
    monkeypatch.chdir(root)
    params = yaml.safe_load((root / "params.yaml").read_text())

    def run(n_folds: int) -> None:
        params["split"]["n_folds"] = n_folds
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        split_flow(), prepare_flow(), train_gbdt_flow()
        for name in params["train_cnn"]["models"]:
            train_cnn_flow(name)
        evaluate_flow()

    run(3)
    assert all(any("fold2" in n for n in names) for names in _fold_files(root).values())
    imp3 = json.loads((root / "models/gbdt/importance_fold2.json").read_text())
    (root / "models/gbdt/importance_fold2.json").write_text(json.dumps({**imp3, "stale_feature": 1e9}))
    run(2)
    files = _fold_files(root)
    assert all(not any(re.search(r"fold[2-9]", n) for n in names) for names in files.values()), files
    assert files["models/gbdt"] == sorted([f"fold{k}_seed{s}.txt" for k in (0, 1) for s in (42, 43, 44)]
                                          + [f"importance_fold{k}.json" for k in (0, 1)]
                                          + [f"pred_fold{k}.parquet" for k in (0, 1)])
    assert "stale_feature" not in (root / "reports/report.html").read_text()
    metrics = json.loads((root / "reports/metrics.json").read_text())["models"]
    assert all(set(m["fold_roc_auc"]) == {"0", "1"} for m in metrics.values())


def test_fold_average_exports_the_mean_logit_of_the_fold_models(pipeline, tmp_path, monkeypatch):
    """`final.image_models: fold_average`: the bundle holds the fold models' weights as trained,
    scores an image by their mean logit (predict and explain alike), keeps the out-of-fold
    threshold, and trains nothing; a fusion model is refused with the key to change."""
    from flows.final import final_flow
    from lesion_ml.app.cli import main
    from lesion_ml.errors import ConfigError
    from lesion_ml.image.net import FoldAverage
    from lesion_ml.io import load_weights
    from lesion_ml.model.bundle import FinalModel
    from tasks.cache import executed

    root = tmp_path / "copy"
    shutil.copytree(pipeline[0], root, symlinks=True)
    monkeypatch.chdir(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["final"].update(model="cnn_tiny", fallback=None, image_models="fold_average")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    executed.clear()
    final_flow()
    assert executed == ["export_final"]
    manifest = json.loads((root / "models/final/manifest.json").read_text())
    spec = manifest["cnn"]["cnn_tiny"]
    assert spec["weights"] == ["cnn_tiny_fold0.safetensors", "cnn_tiny_fold1.safetensors"]
    for k, name in enumerate(spec["weights"]):
        assert (root / "models/final" / name).read_bytes() == (root / f"models/cnn/tiny/fold{k}.safetensors").read_bytes()
    metrics = json.loads((root / "reports/metrics.json").read_text())["models"]["cnn_tiny"]
    assert manifest["threshold"] == metrics["threshold"]
    assert "mean logit of its 2 cross-validation fold models" in (root / "models/final/MODEL_CARD.md").read_text()

    net = FinalModel.load(root / "models/final").cnns["cnn_tiny"].net
    assert isinstance(net, FoldAverage) and len(net.members) == 2
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        logits = [m(x) for m in net.members]
        assert torch.allclose(net(x), (logits[0] + logits[1]) / 2) and not torch.allclose(logits[0], logits[1])
    fold0, state = load_weights(root / "models/cnn/tiny/fold0.safetensors"), net.members[0].state_dict()
    assert set(fold0) <= set(state) and all(torch.equal(state[k], v) for k, v in fold0.items())

    images = root / "data/interim/demo/train-image.hdf5"
    assert _predict("--model", "models/final", "--images", str(images), "--out", str(tmp_path / "p.csv")) == 0
    assert main(["explain", "--model", "models/final", "--images", str(images), "--limit", "3",
                 "--out", str(tmp_path / "x")]) == 0
    cams = pd.read_csv(tmp_path / "x/gradcam.csv").set_index("image_id")
    pred = pd.read_csv(tmp_path / "p.csv").set_index("image_id").loc[cams.index]
    assert (cams["probability"] - pred["probability"]).abs().max() < 1e-4  # both score the mean logit

    params["final"].update(model="cnn_tiny_fusion")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="final.image_models: fold_average cannot export "
                                          "train_cnn.models.tiny_fusion: it uses metadata"):
        final_flow()
