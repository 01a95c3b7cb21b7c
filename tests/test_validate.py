"""`lesion validate`: external-set figures, the report, the recalibrated copy and bad input."""
from __future__ import annotations

import json
import shutil
import subprocess

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lesion_ml.app.cli import main
from lesion_ml.app.validation import read_labelled_set
from lesion_ml.config import CnnModelConfig, to_plain
from lesion_ml.data.sources import DataError
from lesion_ml.image.net import LesionNet
from lesion_ml.model.bundle import write_bundle
from lesion_ml.model.validate import LabelledSet, calibration_fit, validate_external
from tests.conftest import shared_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _bundle(path, threshold=0.5, seed=0):
    """An image-only model folder: an untrained resnet18 at 32 px (its scores are arbitrary but fixed)."""
    torch.manual_seed(seed)
    cfg = CnnModelConfig(backbone="resnet18", image_size=32)
    net = LesionNet("resnet18", "false", 0)
    from lesion_ml.io import weights_bytes

    manifest = {"model": "cnn_x", "combine": "single", "components": ["cnn_x"], "needs_metadata": False,
                "cnn": {"cnn_x": {"weights": "cnn_x.safetensors", "config": to_plain(cfg), "n_meta": 0}},
                "threshold": threshold, "threshold_rule": "test rule", "calibration": None,
                "metrics": {"recall": 0.95, "specificity": 0.4}}
    return write_bundle(path, manifest, {"cnn_x.safetensors": weights_bytes(net.state_dict())}, "# card\n")


def _images(folder, n=40, seed=0):
    """`n` small JPEGs and a generic labels table (half malignant, with sex and age)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = rng.integers(0, 255, (48 + i % 7, 64, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"IMG_{i:03d}.jpg"), img)
        rows.append({"image_file": f"images/IMG_{i:03d}.jpg", "target": i % 2, "sex": ["male", "female"][i % 3 > 0],
                     "age_approx": 20 + 2 * i})
    return pd.DataFrame(rows)


class _Model:
    def __init__(self, manifest, path="m"):
        self.manifest, self.path = manifest, path


def test_with_a_fallback_every_figure_takes_each_row_at_its_own_models_threshold():
    """Rows scored by the image-only fallback are decided at the fallback's threshold: the confusion
    matrix, sensitivity, specificity, precision, their intervals and the subgroups all agree with
    the per-row decisions, and each model's figures are also given on its own rows."""
    rng = np.random.default_rng(3)
    n = 400
    y = (rng.random(n) < 0.35).astype(int)
    p = 1 / (1 + np.exp(-(1.2 * y - 0.6 + rng.normal(0, 1, n))))
    ids = [f"I{i}" for i in range(n)]
    fb = np.arange(n) % 2 == 1  # half the images had no metadata
    thr = np.where(fb, 0.7, 0.3)
    decision = (p >= thr).astype(int)
    table = pd.DataFrame({"image_id": ids, "target": y, "patient_id": [f"P{i // 2}" for i in range(n)],
                          "sex": np.where(rng.random(n) < 0.5, "male", "female")})
    pred = pd.DataFrame({"image_id": ids, "probability": p, "decision": decision, "threshold": thr,
                         "model": np.where(fb, "cnn_x (image-only fallback)", "m"), "status": "ok"})
    model = _Model({"model": "m", "threshold": 0.3, "threshold_rule": "r", "metrics": {"recall": 0.95}})
    res = validate_external(model, LabelledSet(table, "x.csv", True, []), pred, n_boot=200)
    tp, fn = int(((decision == 1) & (y == 1)).sum()), int(((decision == 0) & (y == 1)).sum())
    fp, tn = int(((decision == 1) & (y == 0)).sum()), int(((decision == 0) & (y == 0)).sum())
    assert res["confusion_matrix"] == [[tn, fp], [fn, tp]]
    ext = res["threshold_transfer"]["external"]
    assert ext["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-4)
    assert ext["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-4)
    assert res["precision"] == pytest.approx(tp / (tp + fp))
    lo, hi = res["ci95"]["sensitivity"]
    assert lo <= tp / (tp + fn) <= hi
    for g in res["subgroups"]:
        if g["attribute"] == "sex":
            rows = (table["sex"] == g["group"]).to_numpy()
            assert g["sensitivity"] == pytest.approx(decision[rows & (y == 1)].mean(), abs=1e-4)
    by = res["by_model"]
    assert by["m"]["n_images"] == (~fb).sum() and by["m"]["threshold"] == 0.3
    assert by["cnn_x (image-only fallback)"]["recall"] == pytest.approx(decision[fb & (y == 1)].mean())
    assert "own model's threshold" in res["thresholds_note"]


def test_figures_match_scikit_learn_and_the_threshold_transfer_counts_each_class():
    rng = np.random.default_rng(1)
    n = 300
    y = (rng.random(n) < 0.3).astype(int)
    p = 1 / (1 + np.exp(-(1.5 * y - 0.8 + rng.normal(0, 1, n))))
    ids = [f"I{i}" for i in range(n)]
    table = pd.DataFrame({"image_id": ids, "target": y, "patient_id": [f"P{i // 3}" for i in range(n)],
                          "sex": np.where(rng.random(n) < 0.5, "male", "female")})
    pred = pd.DataFrame({"image_id": ids[::-1], "probability": p[::-1], "decision": (p[::-1] >= 0.4).astype(int),
                         "threshold": 0.4, "model": "m", "status": "ok"})  # another order than the labels
    model = _Model({"model": "m", "threshold": 0.4, "threshold_rule": "r",
                    "metrics": {"recall": 0.95, "specificity": 0.5}})
    res = validate_external(model, LabelledSet(table, "x.csv", True, []), pred, n_boot=50,
                            target_sensitivity=0.9)
    assert res["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    ext = res["threshold_transfer"]["external"]
    assert ext["sensitivity"] == pytest.approx((p[y == 1] >= 0.4).mean(), abs=1e-4)
    assert ext["specificity"] == pytest.approx((p[y == 0] < 0.4).mean(), abs=1e-4)
    assert res["threshold_transfer"]["out_of_fold"] == {"sensitivity": 0.95, "specificity": 0.5}
    assert res["bootstrap"]["unit"] == "patient"
    lo, hi = res["ci95"]["roc_auc"]
    assert lo < res["roc_auc"] < hi
    lt = res["local_threshold"]
    assert lt["sensitivity"] >= 0.9 and (p[y == 1] >= lt["threshold"]).mean() == pytest.approx(lt["sensitivity"],
                                                                                              abs=1e-4)
    assert {g["attribute"] for g in res["subgroups"]} >= {"sex"}
    # an unreadable image is left out of every figure, and named
    pred.loc[pred["image_id"] == "I0", ["status", "probability"]] = ["unreadable: x", np.nan]
    res2 = validate_external(model, LabelledSet(table, "x.csv", False, []), pred, n_boot=0)
    assert res2["n_scored"] == n - 1 and res2["unreadable"] == ["I0"] and res2["bootstrap"]["unit"] == "image"
    assert res2["roc_auc"] == pytest.approx(roc_auc_score(y[1:], p[1:]))


def test_calibration_slope_sees_overconfident_scores():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, 20_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)
    good = calibration_fit(y, 1 / (1 + np.exp(-z)))
    extreme = calibration_fit(y, 1 / (1 + np.exp(-2 * z)))
    shifted = calibration_fit(y, 1 / (1 + np.exp(-(z - 1))))
    assert abs(good["slope"] - 1) < 0.06 and abs(good["in_the_large"]) < 0.02
    assert abs(extreme["slope"] - 0.5) < 0.05
    assert shifted["in_the_large"] > 0.1  # predictions too low: observed above predicted


def test_labels_are_matched_to_images_and_mismatches_are_named(tmp_path):
    csv = tmp_path / "labels.csv"
    table = _images(tmp_path / "images", n=6)
    table.to_csv(csv, index=False)
    ids = [f"IMG_{i:03d}" for i in range(6)]
    got = read_labelled_set(csv, ids)
    assert list(got.table["image_id"]) == ids and not got.by_patient
    with pytest.raises(DataError, match=r"2 of 6 labelled images are not among --images: \['IMG_004', 'IMG_005'\]"):
        read_labelled_set(csv, ids[:4])
    with pytest.raises(DataError, match=r"2 of 8 images under --images have no row .*\['EXTRA_1', 'EXTRA_2'\].*"
                                        r"--ignore-unlabelled"):
        read_labelled_set(csv, ids + ["EXTRA_1", "EXTRA_2"])
    got = read_labelled_set(csv, ids + ["EXTRA_1"], ignore_unlabelled=True)
    assert got.unlabelled == ["EXTRA_1"]
    table.assign(target=1).to_csv(csv, index=False)
    with pytest.raises(DataError, match="all 6 images have target=1; validation needs both"):
        read_labelled_set(csv, ids)
    # HAM10000 format: dx mapped to malignancy, folds by lesion -> bootstrap by lesion
    pd.DataFrame({"image_id": ids, "lesion_id": ["L1", "L1", "L2", "L3", "L4", "L5"],
                  "dx": ["mel", "nv", "bcc", "bkl", "nv", "nv"]}).to_csv(csv, index=False)
    got = read_labelled_set(csv, ids)
    assert list(got.table["target"]) == [1, 0, 1, 0, 0, 0] and got.by_patient


@pytest.fixture
def external(tmp_path):
    table = _images(tmp_path / "ext" / "images")
    table.to_csv(tmp_path / "ext" / "labels.csv", index=False)
    return tmp_path / "ext", _bundle(tmp_path / "model")


def test_validate_cli_writes_report_json_and_predictions_that_agree(tmp_path, external, capsys):
    ext, model = external
    out = tmp_path / "val"
    assert main(["validate", "--model", str(model), "--images", str(ext / "images"), "--labels",
                 str(ext / "labels.csv"), "--out", str(out), "--bootstrap", "100"]) == 0
    res = json.loads((out / "validation.json").read_text())
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == 40 and res["n_scored"] == 40 and res["n_malignant"] == 20
    assert res["roc_auc"] == pytest.approx(roc_auc_score(pred["target"], pred["probability"]), abs=1e-6)
    cm = np.array(res["confusion_matrix"])
    assert cm[1, 1] == ((pred["target"] == 1) & (pred["decision"] == 1)).sum()
    page = (out / "report.html").read_text()
    # one thumbnail per missed cancer / false alarm shown (16 at most each)
    shown = min(16, int(cm[1, 0])) + min(16, int(cm[0, 1]))
    assert page.count("data:image/jpeg;base64,") == shown
    assert "Threshold transfer" in page and "calibration slope" in page
    assert "ROC-AUC" in capsys.readouterr().out


def test_recalibrated_copy_reaches_the_target_and_leaves_the_original_alone(tmp_path, external):
    ext, model = external
    before = {f.name: f.read_bytes() for f in model.iterdir()}
    args = ["validate", "--model", str(model), "--images", str(ext / "images"), "--labels", str(ext / "labels.csv"),
            "--bootstrap", "0"]
    assert main(args + ["--out", str(tmp_path / "v1"), "--recalibrate", "--target-sensitivity", "0.9",
                        "--export", str(tmp_path / "site")]) == 0
    assert {f.name: f.read_bytes() for f in model.iterdir()} == before
    man = json.loads((tmp_path / "site" / "manifest.json").read_text())
    site = man["site_threshold"]
    assert site["n_images"] == 40 and site["original_threshold"] == 0.5 and man["threshold"] == site["threshold"]
    assert "Site-specific threshold" in (tmp_path / "site" / "MODEL_CARD.md").read_text()
    # the copy, validated on the same set, meets the target there
    assert main(args + ["--model", str(tmp_path / "site"), "--out", str(tmp_path / "v2")]) == 0
    res = json.loads((tmp_path / "v2" / "validation.json").read_text())
    assert res["threshold"] == man["threshold"] and res["threshold_transfer"]["external"]["sensitivity"] >= 0.9
    # never over the original, never over an existing folder
    assert main(args + ["--out", str(tmp_path / "v3"), "--recalibrate", "--export", str(model)]) == 2
    assert main(args + ["--out", str(tmp_path / "v3"), "--recalibrate", "--export", str(tmp_path / "site")]) == 2
    assert main(args + ["--out", str(tmp_path / "v3"), "--export", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()


def test_bad_input_is_named_and_nothing_is_written(tmp_path, external, capsys):
    ext, model = external
    out = tmp_path / "val"
    base = ["validate", "--model", str(model), "--images", str(ext / "images"), "--out", str(out)]
    labels = pd.read_csv(ext / "labels.csv")
    bad = tmp_path / "bad.csv"
    pd.concat([labels, pd.DataFrame([{"image_file": "images/GONE.jpg", "target": 1}])]).to_csv(bad, index=False)
    assert main(base + ["--labels", str(bad)]) == 2
    assert "1 of 41 labelled images are not among --images: ['GONE']" in capsys.readouterr().err
    labels.iloc[:-3].to_csv(bad, index=False)
    assert main(base + ["--labels", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "3 of 40 images under --images have no row" in err and "IMG_039" in err and "--ignore-unlabelled" in err
    labels[labels["target"] == 0].to_csv(bad, index=False)
    assert main(base + ["--labels", str(bad), "--ignore-unlabelled"]) == 2
    assert "all 20 images have target=0" in capsys.readouterr().err
    man = json.loads((model / "manifest.json").read_text())
    (model / "manifest.json").write_text(json.dumps({**man, "format": "lesion-ml-model/0"}))
    assert main(base + ["--labels", str(ext / "labels.csv")]) == 2
    assert "format 'lesion-ml-model/0', expected 'lesion-ml-model/3'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_validate_on_the_real_external_set_and_its_report_renders(tmp_path):
    ext = shared_dataset("isic-uda1-555")
    model = _bundle(tmp_path / "model")
    out = tmp_path / "val"
    assert main(["validate", "--model", str(model), "--images", str(ext / "images"), "--labels",
                 str(ext / "labels.csv"), "--out", str(out)]) == 0
    res = json.loads((out / "validation.json").read_text())
    assert res["n_scored"] == 555 and res["n_malignant"] == 159, res
    assert {g["attribute"] for g in res["subgroups"]} >= {"sex", "age_band"}
    if CHROMIUM is None:
        pytest.skip("needs headless Chromium to render the report (apt-get install chromium; .ci/run does)")
    shot = tmp_path / "shot.png"
    page = (out / "report.html").as_uri()
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--screenshot={shot}", "--window-size=1200,3000", page], capture_output=True, text=True,
                         timeout=120)
    assert shot.is_file(), run.stderr[-2000:]
    img = cv2.imread(str(shot))[..., ::-1].astype(int)
    blue = (np.abs(img - [31, 119, 180]).sum(axis=2) < 40).sum()  # matplotlib's tab:blue: the plots rendered
    assert blue > 500, blue
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page],
                         capture_output=True, text=True, timeout=120).stdout
    shown = min(16, res["confusion_matrix"][1][0]) + min(16, res["confusion_matrix"][0][1])
    assert "<h2>Threshold transfer</h2>" in dom and dom.count("<img") == 3 + shown


def test_an_explicit_target_wins_over_dx_and_errors_name_the_validate_flags(tmp_path, caplog):
    """A labels CSV with image_id, target and a free-text dx is a generic file (its dx describes,
    target labels); without target, an unknown dx and an unknown format name what a `lesion
    validate` user changes (a target column, --format), not a params.yaml key; and nothing speaks
    of folds, which validation does not make."""
    import logging

    csv = tmp_path / "labels.csv"
    ids = [f"IMG_{i:03d}" for i in range(4)]
    pd.DataFrame({"image_id": ids, "target": [1, 0, 0, 1],
                  "dx": ["Melanoma", "Common Nevus", "Common Nevus", "Melanoma"]}).to_csv(csv, index=False)
    with caplog.at_level(logging.INFO, logger="lesion_ml"):
        got = read_labelled_set(csv, ids)
    assert list(got.table["target"]) == [1, 0, 0, 1]
    assert "folds" not in caplog.text and "the intervals resample images" in caplog.text
    pd.DataFrame({"image_id": ids, "dx": ["mel", "Common Nevus", "nv", "bcc"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"row 3: dx 'Common Nevus' is not one of .*give the CSV a 0/1 target column") \
            as err:
        read_labelled_set(csv, ids)
    assert "params.yaml" not in str(err.value)
    pd.DataFrame({"image_id": ids, "label": [1, 0, 0, 1]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match="cannot tell the CSV format .* name the format with --format$"):
        read_labelled_set(csv, ids)


def test_the_old_section_name_external_is_read_as_validate_with_a_warning(tmp_path):
    """For one release a params file may still call the section `external`: it is read as
    `validate`, and a FutureWarning names the new key."""
    from lesion_ml.config import load_params

    params = tmp_path / "params.yaml"
    params.write_text("external:\n  bootstrap: 7\n  sets:\n    clinic: {images: ext/images, labels: ext/labels.csv}\n")
    with pytest.warns(FutureWarning, match=r"params.yaml section `external` is now `validate`; rename it"):
        p = load_params(params)
    assert p.validate.bootstrap == 7 and set(p.validate.sets) == {"clinic"}
    assert p.validate.sets["clinic"].labels == "ext/labels.csv"


def test_a_params_file_with_both_external_and_validate_is_refused_naming_both(tmp_path):
    import warnings

    from lesion_ml.config import ConfigError, load_params, validate_params

    params = tmp_path / "params.yaml"
    params.write_text("validate:\n  bootstrap: 5\nexternal:\n  bootstrap: 7\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused outright, not warned about
        with pytest.raises(ConfigError, match=rf"{params}: has both section `external` .* and `validate`"):
            load_params(params)
    with pytest.raises(ConfigError, match="`external` is now `validate`: move what `external` holds into `validate`"):
        validate_params({"external": {}, "validate": {}}, "x.yaml")


def test_merging_an_override_with_the_old_section_name_writes_validate(tmp_path):
    """`lesion params --merge` of an old example (section `external`) into a params.yaml that has
    `validate`: its sets replace validate.sets, and the written file has no `external` section."""
    import yaml

    from lesion_ml.config import apply_override

    base, over = tmp_path / "params.yaml", tmp_path / "old.yaml"
    base.write_text("validate:\n  bootstrap: 9\n  sets:\n    a: {images: i, labels: l}\n")
    over.write_text("external:\n  sets:\n    b: {images: j, labels: m}\n")
    with pytest.warns(FutureWarning, match=rf"`external` is now `validate`; rename it in {over}"):
        p = apply_override(over, base)
    assert set(p.validate.sets) == {"b"} and p.validate.bootstrap == 9
    written = yaml.safe_load(base.read_text())
    assert "external" not in written and set(written["validate"]["sets"]) == {"b"}


def test_an_export_that_fails_half_way_leaves_neither_the_folder_nor_a_temporary_one(tmp_path, external, monkeypatch):
    """The recalibrated copy is filled beside its destination and swapped in only when complete."""
    from lesion_ml.app import validation

    ext, model = external

    def broken(*args, **kwargs):
        raise OSError("disk went away")

    monkeypatch.setattr(validation, "recalibrated", broken)
    with pytest.raises(OSError, match="disk went away"):
        validation.run_validation(model, images=[ext / "images"], labels=ext / "labels.csv", out=tmp_path / "v",
                                  n_boot=0, target_sensitivity=0.9, export=tmp_path / "site")
    assert not (tmp_path / "site").exists()
    assert [f.name for f in tmp_path.iterdir() if "site" in f.name] == []
