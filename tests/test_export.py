"""The final model's pieces: JSON preprocessor, calibration maps, bundle files, prediction inputs."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lesion_ml.catalogue import base_models, derived_models, find
from lesion_ml.config import PrepareConfig, SelectConfig
from lesion_ml.data.sources import DataError
from lesion_ml.data.synthetic_tabular import generate_metadata
from lesion_ml.evaluate.combine import Calibrator, RankEnsemble
from lesion_ml.model.bundle import FinalModel, write_bundle
from lesion_ml.model.predict import open_images, read_metadata
from lesion_ml.tabular.export import apply_preprocessor, export_preprocessor
from lesion_ml.tabular.prepare import clean_metadata, fit_transform_fold

FAMILIES = ("size_shape", "colour", "patient_relative")


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    t = generate_metadata(n_rows=3000, n_patients=120, malignant_fraction=0.02, seed=3)
    site = t["anatom_site_general"].astype(object).to_numpy().copy()
    site[:3] = "palms/soles"  # a spelling that maps to a rare category
    t["tbp_lv_location"] = np.where(np.arange(len(t)) < 3, "Left Ear", t["tbp_lv_location"].astype(object))
    return t.assign(anatom_site_general=site)


@pytest.mark.parametrize("k", [6, 400])
def test_exported_preprocessor_reproduces_the_fitted_pipeline(table, k):
    clean = clean_metadata(table, FAMILIES)
    cfg = PrepareConfig(select=SelectConfig(k=k, max_rows=2000), features=FAMILIES)
    train = np.arange(len(table)) % 4 != 0
    _, names, pipe = fit_transform_fold(clean, table["target"], train, cfg)
    spec = json.loads(json.dumps(export_preprocessor(pipe, names, FAMILIES)))  # through JSON, as in the bundle
    if k == 400:  # every output kind is exercised
        assert {f["kind"] for f in spec["features"]} == {"value", "missing", "category", "other"}
    new = clean.copy()
    new.loc[new.index[:4], "tbp_lv_location"] = "never seen"  # unseen category: the infrequent bucket
    new.loc[new.index[4:9], new.columns] = np.nan  # every value missing
    new.loc[new.index[9], "clin_size_long_diam_mm"] = 1e9  # beyond the training range: clipped
    for X in (clean, new):
        expected = pipe.transform(X).astype("float32")
        got = apply_preprocessor(spec, X)
        assert list(got.columns) == names
        np.testing.assert_array_equal(got.to_numpy(), expected)


def test_knn_imputation_cannot_be_exported_and_missing_columns_are_named(table):
    clean = clean_metadata(table, ())
    cfg = PrepareConfig(impute="knn", select=SelectConfig(k=5, max_rows=1000), features=(), fit_rows=800)
    _, names, pipe = fit_transform_fold(clean, table["target"], np.ones(len(table), bool), cfg)
    with pytest.raises(ValueError, match="prepare.impute: median"):
        export_preprocessor(pipe, names, ())
    _, names, pipe = fit_transform_fold(clean, table["target"], np.ones(len(table), bool), cfg.model_copy(
        update={"impute": "median"}))
    spec = export_preprocessor(pipe, names, ())
    gone = spec["features"][0]["column"]
    with pytest.raises(DataError, match=f"new.csv: .*column\\(s\\) \\['{gone}'\\]"):
        apply_preprocessor(spec, clean.drop(columns=gone), where="new.csv")


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibration_map_in_json_matches_scikit_learn(method):
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 500), 0, 1)
    cal = Calibrator.from_json(json.loads(json.dumps(Calibrator(method).fit(y, p).to_json())))
    new = rng.uniform(0, 1, 200)
    q = np.clip(new, 1e-6, 1 - 1e-6)
    if method == "isotonic":
        ref = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(np.clip(p, 1e-6, 1 - 1e-6), y).predict(q)
    else:
        pc = np.clip(p, 1e-6, 1 - 1e-6)
        lr = LogisticRegression(C=1e6).fit(np.log(pc / (1 - pc)).reshape(-1, 1), y)
        ref = lr.predict_proba(np.log(q / (1 - q)).reshape(-1, 1))[:, 1]
    np.testing.assert_allclose(cal.predict(new), ref, atol=1e-9)
    assert Calibrator("none").fit(y, p).to_json() is None
    assert np.array_equal(Calibrator.from_json(None).predict(new), new)


def test_catalogue_components_and_rank_reference():
    from lesion_ml.config import CnnModelConfig, EvaluateConfig

    cnns = {"a": CnnModelConfig(), "b": CnnModelConfig(fusion={"enabled": True})}
    base = ["gbdt", "cnn_a", "cnn_b"]
    a, rank, stack = find("cnn_a", cnns), find("ensemble_rank", cnns), find("stack_gbdt_images", cnns)
    assert (a.kind, a.combine, a.components, a.cnns, a.needs_metadata) == ("cnn", "single", ("cnn_a",), ("a",), False)
    assert find("cnn_b", cnns).needs_metadata and find("gbdt", cnns).needs_metadata  # fusion, metadata model
    assert (rank.combine, list(rank.components), rank.is_probability) == ("rank", base, False)
    assert (stack.combine, stack.components, stack.cnns, stack.needs_metadata) == ("stack", ("cnn_a", "cnn_b"),
                                                                                    ("a", "b"), True)
    assert find("ensemble_mean", {"a": cnns["a"]}).needs_metadata  # it includes the metadata model
    with pytest.raises(ValueError, match="final.model"):
        find("cnn_c", cnns)
    names = lambda refs: [r.name for r in refs]  # noqa: E731
    assert names(derived_models(base_models(cnns), EvaluateConfig())) == ["ensemble_mean", "ensemble_rank",
                                                                         "stack_gbdt_images"]
    assert names(derived_models(base_models({}), EvaluateConfig())) == []  # one model: nothing to combine
    assert names(derived_models(base_models(cnns), EvaluateConfig(ensembles=False))) == ["stack_gbdt_images"]
    scores = np.random.default_rng(1).uniform(size=1000)
    rank = RankEnsemble(["x"]).fit({"x": scores})
    pct = RankEnsemble.from_json(json.loads(json.dumps(rank.to_json()))).predict({"x": scores})
    from scipy.stats import rankdata

    assert np.abs(pct - rankdata(scores) / len(scores)).max() < 0.005  # the OOF percentile rank


def test_bundle_write_is_atomic_and_loading_refuses_pickles(tmp_path):
    out = tmp_path / "final"
    write_bundle(out, {"model": "old", "combine": "single", "components": [], "needs_metadata": False}, {}, "old")
    with pytest.raises(OSError):  # the second file cannot be written: the export fails half way
        write_bundle(out, {"model": "new"}, {"x.bin": b"1", "no/such/folder.bin": b"2"}, "new")
    assert json.loads((out / "manifest.json").read_text())["model"] == "old"  # the old bundle is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no temporary folder left
    with pytest.raises(DataError, match="no manifest.json"):
        FinalModel.load(tmp_path / "nowhere")

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"w": Evil()}, out / "cnn_x.pt")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["cnn"] = {"cnn_x": {"weights": "cnn_x.pt", "n_meta": 0, "config": {"backbone": "resnet18"}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"cnn_x.pt: cannot load the weights \(not a safetensors file"):
        FinalModel.load(out)  # a pickle is never unpickled: it is not safetensors


def test_prediction_inputs_are_checked(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        open_images([tmp_path / "missing.jpg"])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "ISIC_1.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="same image id 'ISIC_1'"):
        open_images([tmp_path / "a/ISIC_1.jpg", tmp_path / "b/ISIC_1.jpg"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt: not an image file"):
        open_images([tmp_path / "a/ISIC_1.jpg", tmp_path / "notes.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        open_images([tmp_path / "empty"])
    store, ids = open_images([tmp_path / "a"])
    assert ids == ["ISIC_1"]
    csv = tmp_path / "m.csv"
    csv.write_text("name,age\nx,3\n")
    with pytest.raises(DataError, match="no image id column"):
        read_metadata(csv)
    csv.write_text("isic_id,age\nISIC_1.jpg,3\nISIC_1,4\n")
    with pytest.raises(DataError, match="'ISIC_1' appears more than once"):
        read_metadata(csv)
    csv.write_text("image_id,age,localization\nISIC_1,40,back\nISIC_2,50,face\n")
    meta = read_metadata(csv)
    assert list(meta["patient_id"]) == ["ISIC_1", "ISIC_2"] and "age_approx" in meta and "anatom_site_general" in meta


@pytest.mark.parametrize("key", ["preprocess", "gbdt", "stack", "cnn"])
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_model_folder_refuses_files_outside_itself(tmp_path, key, how):
    outside = tmp_path / "elsewhere" / "secret.json"
    outside.parent.mkdir()
    outside.write_text("{}")  # valid JSON: without the check, a preprocess reference would load it
    out = tmp_path / "final"
    write_bundle(out, {"model": "m", "combine": "single", "components": [], "needs_metadata": False}, {}, "card")
    if how == "dotdot":
        ref = "../elsewhere/secret.json"
    elif how == "absolute":
        ref = str(outside)
    else:
        ref = "linked.json"
        (out / ref).symlink_to(outside)
    manifest = json.loads((out / "manifest.json").read_text())
    if key == "preprocess":
        manifest["preprocess"] = ref
    elif key == "gbdt":
        manifest[key] = {"files": [ref], "columns": ["a"]}
    elif key == "stack":
        manifest["combiner"] = {"kind": "stack", "components": ["cnn_x"], "files": [ref], "columns": ["a"]}
    else:
        manifest["cnn"] = {"cnn_x": {"weights": ref, "n_meta": 0, "config": {"backbone": "resnet18"}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    pattern = "outside the model folder" if how == "symlink" else "may only name files inside itself"
    with pytest.raises(DataError, match=pattern) as err:
        FinalModel.load(out)
    assert "manifest.json" in str(err.value) and repr(ref) in str(err.value)


def test_model_folder_accepts_links_that_stay_inside_and_refuses_a_linked_manifest(tmp_path):
    out = tmp_path / "final"
    write_bundle(out, {"model": "m", "combine": "single", "components": [], "needs_metadata": False,
                       "preprocess": "pre.json"}, {"real.json": '{"features": []}'}, "card")
    (out / "pre.json").symlink_to("real.json")  # relative link to a file of the folder: fine
    assert FinalModel.load(out).preprocess == {"features": []}
    moved = tmp_path / "manifest-elsewhere.json"
    (out / "manifest.json").rename(moved)
    (out / "manifest.json").symlink_to(moved)
    with pytest.raises(DataError, match="outside the model folder"):
        FinalModel.load(out)
