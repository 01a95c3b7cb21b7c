"""What evaluate reports is what the exported model does: the combined models score the
out-of-fold rows with the estimator the bundle serves, the exported calibrator and threshold give
the out-of-fold sensitivity that metrics.json reports, out-of-fold predictions never depend on their
own fold's labels, and the final-model choice prefers the simpler model within the noise."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lesion_ml.catalogue import base_models
from lesion_ml.config import CnnModelConfig, EvaluateConfig, TrainGbdtConfig, validate_params
from lesion_ml.evaluate.compare import compare_models, complexity
from lesion_ml.model.build import combination, operating_point
from lesion_ml.model.bundle import FinalModel, write_bundle

CNNS = {"a": CnnModelConfig(), "b": CnnModelConfig(fusion={"enabled": True})}


def _oof(n: int = 900, seed: int = 0, strength: tuple[float, float, float] = (1.6, 1.2, 1.0)) -> tuple:
    """Out-of-fold rows of three base models (gbdt, cnn_a, cnn_b) on different probability scales,
    3 folds of whole patients, and each fold's metadata features."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    patients = np.array([f"P{i // 3}" for i in range(n)])
    fold = np.array([int(p[1:]) % 3 for p in patients])
    logit = lambda s, shift: s * y - shift + rng.normal(0, 1, n)  # noqa: E731
    oof = pd.DataFrame({"image_id": [f"I{i:04d}" for i in range(n)], "fold": fold, "target": y,
                        "gbdt": 1 / (1 + np.exp(-logit(strength[0], 1.0))),
                        "cnn_a": 1 / (1 + np.exp(-logit(strength[1], 0.2))) ** 3,  # squashed: another scale
                        "cnn_b": 1 / (1 + np.exp(-logit(strength[2], 0.5)))})
    table = pd.DataFrame({"image_id": oof["image_id"], "patient_id": patients, "target": y})
    feats = pd.DataFrame({"f1": y + rng.normal(0, 1.5, n), "f2": rng.normal(0, 1, n)})
    return oof, table, lambda k: feats


def _compare(oof, table, features_of, **cfg):
    models = base_models(CNNS)
    gbdt = TrainGbdtConfig(n_estimators=20, num_leaves=4, min_child_samples=5, seeds=(1, 2), n_jobs=1)
    cfg = EvaluateConfig(**{"bootstrap": 0, **cfg})
    return compare_models(oof, models, table, features_of=features_of, importance={}, cfg=cfg, gbdt_cfg=gbdt), cfg, gbdt


@pytest.mark.parametrize("calibrate", ["none", "isotonic", "platt"])
def test_the_exported_calibrator_and_threshold_give_the_reported_sensitivity(calibrate, tmp_path):
    """For every model: the calibrator and threshold the final stage exports, applied by the bundle
    to the out-of-fold scores, flag exactly the rows that metrics.json's sensitivity and
    specificity count (a threshold chosen on cross-fitted calibrated scores but exported with a
    calibrator fitted on every row does not)."""
    oof, table, features_of = _oof()
    result, cfg, _ = _compare(oof, table, features_of, calibrate=calibrate)
    scores = result.scores
    y = scores["target"].to_numpy()
    for ref in result.models:
        m = result.metrics["models"][ref.name]
        point = operating_point(ref, cfg, m, scores)
        model = FinalModel(tmp_path, {**point, "model": ref.name, "components": [ref.name]})
        _, decision = model.finish(scores[ref.raw].to_numpy())
        assert decision[y == 1].mean() == pytest.approx(m["recall"], abs=1e-12), ref.name
        assert 1 - decision[y == 0].mean() == pytest.approx(m["specificity"], abs=1e-12), ref.name
        assert m["recall"] >= cfg.target_sensitivity
    assert (calibrate == "none") == all(operating_point(r, cfg, result.metrics["models"][r.name], scores)
                                        ["calibration"] is None for r in result.models)


@pytest.mark.parametrize("name", ["ensemble_mean", "ensemble_rank"])
def test_the_bundle_combines_scores_with_the_rule_evaluate_scored(name, tmp_path):
    """The ensemble the bundle serves, fitted as the final stage fits it and read back from its
    model folder, gives each out-of-fold row exactly the score evaluate gave it."""
    oof, table, features_of = _oof()
    result, _, gbdt = _compare(oof, table, features_of)
    ref = next(r for r in result.models if r.name == name)
    params = validate_params({"train_cnn": {"models": {k: c.model_dump(mode="json") for k, c in CNNS.items()}},
                              "train_gbdt": gbdt.model_dump(mode="json")})
    scores = result.scores.set_index("image_id")
    files: dict = {}
    spec = combination(params, ref, scores, scores["target"].to_numpy(), None, files)
    write_bundle(tmp_path / "m", {"model": name, "combine": ref.combine, "components": list(ref.components),
                                  "needs_metadata": True, "combiner": spec, "calibration": None, "threshold": 0.5},
                 files, "card")
    served = FinalModel.load(tmp_path / "m").combine({c: scores[c].to_numpy() for c in ref.components})
    np.testing.assert_allclose(served, scores[name].to_numpy(), rtol=0, atol=1e-12)


def test_the_exported_stack_is_the_estimator_evaluate_cross_fits(tmp_path):
    """The stack the bundle serves predicts through the same estimator class and input columns as
    evaluate's cross-fitted stack: fitted on every row, it reproduces the in-sample predictions of
    that estimator exactly after the round trip through the model folder."""
    from lesion_ml.evaluate.combine import StackEnsemble

    oof, table, features_of = _oof()
    result, _, gbdt = _compare(oof, table, features_of)
    ref = next(r for r in result.models if r.name == "stack_gbdt_images")
    params = validate_params({"train_cnn": {"models": {k: c.model_dump(mode="json") for k, c in CNNS.items()}},
                              "train_gbdt": gbdt.model_dump(mode="json")})
    scores = result.scores.set_index("image_id")
    feats, y = features_of(0), scores["target"].to_numpy()
    files: dict = {}
    spec = combination(params, ref, scores, y, feats, files)
    write_bundle(tmp_path / "m", {"model": ref.name, "combine": "stack", "components": list(ref.components),
                                  "needs_metadata": True, "combiner": spec, "calibration": None, "threshold": 0.5},
                 files, "card")
    parts = {c: scores[c].to_numpy() for c in ref.components}
    served = FinalModel.load(tmp_path / "m").combine(parts, feats)
    direct = StackEnsemble(ref.components, params.train_gbdt).fit(pd.DataFrame(parts), y, feats)
    np.testing.assert_array_equal(served, direct.predict(parts, feats))
    assert spec["columns"] == ["f1", "f2", "score_cnn_a", "score_cnn_b"] and len(spec["files"]) == 2


def test_within_the_noise_the_simpler_model_is_chosen_and_the_margin_recorded():
    """Two image models of equal skill: the leader by pAUC is whichever the noise favours, the other
    is the runner-up, and the choice goes to the simpler (image-only) one. A runner-up that the
    leader clearly beats, or one that is not simpler, leaves the leader chosen."""
    oof, table, features_of = _oof(600, seed=4, strength=(0.4, 1.5, 1.5))
    result, cfg, _ = _compare(oof, table, features_of, bootstrap=300, ensembles=False, stack=False)
    sel = result.metrics["selection"]
    metrics = result.metrics["models"]
    ranked = sorted(metrics, key=lambda n: -metrics[n]["pauc_80"])
    assert (sel["leader"], sel["runner_up"]) == tuple(ranked[:2]) and set(ranked[:2]) == {"cnn_a", "cnn_b"}
    assert sel["margin"]["ci95"][0] <= 0 <= sel["margin"]["ci95"][1]  # equal skill: within the noise
    assert result.metrics["best_model"] == sel["chosen"] == "cnn_a"  # image-only before fusion
    # a model the data clearly prefer wins even though it is the more complex one
    oof2, table2, features_of2 = _oof(600, seed=4, strength=(0.4, 0.4, 2.5))
    clear, _, _ = _compare(oof2, table2, features_of2, bootstrap=300, ensembles=False, stack=False)
    assert clear.metrics["best_model"] == clear.metrics["selection"]["leader"] == "cnn_b"
    assert clear.metrics["selection"]["margin"]["ci95"][0] > 0
    refs = {r.name: r for r in result.models}
    assert complexity(refs["cnn_a"]) < complexity(refs["gbdt"]) < complexity(refs["cnn_b"])


def test_an_undefined_metric_is_never_chosen():
    """A model whose select_metric is NaN (undefined) loses to every defined one, in any order."""
    from lesion_ml.evaluate.compare import select_model

    models = base_models(CNNS)
    metrics = {"gbdt": {"pauc_80": float("nan")}, "cnn_a": {"pauc_80": 0.05}, "cnn_b": {"pauc_80": 0.07}}
    for order in (models, models[::-1]):
        sel = select_model(order, metrics, pd.DataFrame(), np.zeros(3), np.zeros(3), EvaluateConfig(bootstrap=0))
        assert sel["chosen"] == sel["leader"] == "cnn_b"
    with pytest.raises(ValueError, match="undefined for every model"):
        select_model(models, {n: {"pauc_80": float("nan")} for n in metrics}, pd.DataFrame(), np.zeros(3),
                     np.zeros(3), EvaluateConfig(bootstrap=0))


def _flip_fold(frame: pd.DataFrame, fold_of: pd.Series, k: int) -> pd.DataFrame:
    """`frame` with the labels of fold k's rows flipped."""
    out = frame.copy()
    rows = out["image_id"].map(fold_of).to_numpy() == k
    out.loc[rows, "target"] = 1 - out.loc[rows, "target"]
    return out


def test_a_folds_labels_never_reach_its_out_of_fold_metadata_predictions(tiny_demo, tmp_path):
    """The metadata model's pipeline (preprocessing and selection fitted per fold, then LightGBM):
    flipping every label of fold 1 leaves fold 1's out-of-fold predictions unchanged, and changes
    fold 0's (the flipped rows are its training rows)."""
    from lesion_ml.config import DataConfig, PrepareConfig, SplitConfig
    from lesion_ml.data.sources import ingest
    from tasks.prepare import clean_features, prepare_fold
    from tasks.split import make_folds
    from tasks.train_gbdt import train_gbdt_fold

    table = ingest(DataConfig(source="synthetic"), tiny_demo).table
    table.to_parquet(tmp_path / "lesions.parquet")
    raw = lambda t: t.fn.__wrapped__  # noqa: E731 - the task body, without the cache
    raw(make_folds)(lesions=tmp_path / "lesions.parquet", cfg=SplitConfig(n_folds=2, seed=0),
                    out=tmp_path / "folds.parquet")
    prep = PrepareConfig(select={"k": 8})
    raw(clean_features)(lesions=tmp_path / "lesions.parquet", cfg=prep, out=tmp_path / "clean.parquet")
    folds = pd.read_parquet(tmp_path / "folds.parquet")
    fold_of = folds.set_index("image_id")["fold"]
    gbdt = TrainGbdtConfig(n_estimators=20, num_leaves=4, min_child_samples=2, n_jobs=1)

    def oof(run: str, flip: bool) -> dict[int, np.ndarray]:
        d = tmp_path / run
        d.mkdir()
        clean, f = pd.read_parquet(tmp_path / "clean.parquet"), folds
        if flip:
            clean, f = _flip_fold(clean, fold_of, 1), _flip_fold(folds, fold_of, 1)
        clean.to_parquet(d / "clean.parquet")
        f.to_parquet(d / "folds.parquet")
        out = {}
        for k in (0, 1):
            raw(prepare_fold)(clean=d / "clean.parquet", folds=d / "folds.parquet", cfg=prep, fold=k,
                              out=d / f"features{k}.parquet")
            pred = raw(train_gbdt_fold)(features=d / f"features{k}.parquet", folds=d / "folds.parquet", cfg=gbdt,
                                        fold=k, out_boosters=[d / f"fold{k}_seed{s}.txt" for s in gbdt.seeds],
                                        out_importance=d / f"importance{k}.json", out_pred=d / f"pred{k}.parquet")
            out[k] = pd.read_parquet(pred)["pred"].to_numpy()
        return out

    a, b = oof("true", False), oof("flipped", True)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], b[0])


@pytest.mark.slow
def test_a_folds_labels_never_reach_its_out_of_fold_image_predictions(tiny_demo):
    """The image model's fold (rows from `fold_data`, as the train_cnn stage builds them): flipping
    fold 1's labels leaves its predictions unchanged; flipping the training rows' labels does not."""
    import torch

    from lesion_ml.config import SplitConfig
    from lesion_ml.data.split import assign_folds
    from lesion_ml.image.data import fold_data
    from lesion_ml.image.train import train_fold
    from tests.test_train import _tiny

    store, ids, y, groups = _tiny(tiny_demo)
    folds = assign_folds(pd.DataFrame({"image_id": ids, "patient_id": groups, "target": y.astype(int)}),
                         SplitConfig(n_folds=2, seed=0))
    fold_of = folds.set_index("image_id")["fold"]
    cfg = CnnModelConfig(image_size=16, epochs=1, batch_size=8, monitor_valid=True)

    def predict(f: pd.DataFrame) -> np.ndarray:
        train = (f["fold"] != 1).to_numpy()
        return train_fold(store, fold_data(f, train, cfg), cfg, torch.device("cpu"), seed=1).valid_pred

    base = predict(folds)
    np.testing.assert_array_equal(base, predict(_flip_fold(folds, fold_of, 1)))
    assert not np.array_equal(base, predict(_flip_fold(folds, fold_of, 0)))


def test_a_folds_labels_never_reach_its_out_of_fold_stack_predictions():
    """evaluate's stack (cross-fitted over the metadata features and the image scores): fold 2's
    stacked scores do not move when fold 2's labels are flipped."""
    from lesion_ml.evaluate.compare import model_scores

    oof, _, features_of = _oof()
    gbdt = TrainGbdtConfig(n_estimators=20, num_leaves=4, min_child_samples=5, seeds=(1,), n_jobs=1)
    flipped = oof.assign(target=np.where(oof["fold"] == 2, 1 - oof["target"], oof["target"]))
    cfg = EvaluateConfig(bootstrap=0, ensembles=False)
    a = model_scores(oof, base_models(CNNS), cfg, gbdt, features_of)[1]["stack_gbdt_images"].to_numpy()
    b = model_scores(flipped, base_models(CNNS), cfg, gbdt, features_of)[1]["stack_gbdt_images"].to_numpy()
    rows = oof["fold"].to_numpy() == 2
    np.testing.assert_array_equal(a[rows], b[rows])
    assert not np.array_equal(a[~rows], b[~rows])
