"""`lesion bench sites` (leave one site out): its recipe, its folds and its figures (the whole run
takes about 20 minutes: docs/validation.md)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from lesion_ml.app.bench_sites import format_sites_table, image_ids, site_figures, sites_recipe
from lesion_ml.app.cli import main
from lesion_ml.config import SplitConfig
from lesion_ml.config.params import load_params, merge_params
from lesion_ml.data.split import assign_folds

SITES = {"north": (300, 0.7), "south": (200, 0.1), "east": (150, 0.5), "west": (60, 0.4)}  # images, malignant share


def _labels(seed: int = 0) -> pd.DataFrame:
    """Four sites of HAM10000-like labels (a lesion has 1-2 images), their malignant shares far apart."""
    rng = np.random.default_rng(seed)
    rows = []
    for site, (n, share) in SITES.items():
        k = 0
        while sum(r["site"] == site for r in rows) < n:
            target = int(rng.random() < share)
            rows += [{"image_file": f"images/{site}{k}_{i}.jpg", "isic_id": f"{site}{k}_{i}", "lesion_id": f"{site}{k}",
                      "site": site, "target": target} for i in range(rng.integers(1, 3))]
            k += 1
    return pd.DataFrame(rows)


def test_the_recipe_has_one_fold_per_site_no_external_set_and_no_patient_relative_features():
    base = yaml.safe_load(open("params.yaml"))
    recipe = yaml.safe_load(open("examples/ham10000-2000.yaml"))
    out = sites_recipe(recipe, base, "ham_dataset", 4)
    merged = merge_params(base, out)
    assert merged["split"]["n_folds"] == 4 and merged["data"]["folder"]["group_column"] == "ham_dataset"
    assert merged["validate"]["sets"] == {} and merged["train_cnn"]["models"] == recipe["train_cnn"]["models"]
    assert "patient_relative" in base["prepare"]["features"]
    assert merged["prepare"]["features"] == [f for f in base["prepare"]["features"] if f != "patient_relative"]
    assert "ham_dataset" in merged["prepare"]["exclude_columns"]  # the recipe's exclusions stay


def test_the_recipe_validates_as_params(tmp_path):
    base = yaml.safe_load(open("params.yaml"))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(merge_params(base, sites_recipe(
        yaml.safe_load(open("examples/ham10000-2000.yaml")), base, "ham_dataset", 4))))
    p = load_params(path)
    assert p.split.n_folds == 4 and p.data.folder.group_column == "ham_dataset"


def test_grouping_the_folds_by_site_leaves_exactly_one_site_in_each_fold():
    labels = _labels()
    table = labels.assign(image_id=image_ids(labels), patient_id=labels["site"])
    folds = assign_folds(table, SplitConfig(n_folds=len(SITES), seed=42))
    per_fold = folds.merge(labels.assign(image_id=image_ids(labels)), on="image_id").groupby("fold")["site"]
    assert per_fold.nunique().tolist() == [1] * len(SITES)
    assert sorted(per_fold.first()) == sorted(SITES)


def _scores(labels: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    fold = {s: k for k, s in enumerate(SITES)}
    y = labels["target"].to_numpy()
    good = y * 1.0 + rng.normal(0, 0.8, len(y))  # separates the classes
    noise = rng.random(len(y))  # does not
    return pd.DataFrame({"image_id": image_ids(labels), "fold": labels["site"].map(fold), "target": y,
                         "cnn_a": 1 / (1 + np.exp(-good)), "gbdt": noise})


def test_per_site_figures_are_those_of_each_sites_rows_and_the_pooled_ones_of_all():
    labels = _labels()
    scores = _scores(labels)
    keep = labels.assign(image_id=image_ids(labels))[["image_id", "site", "lesion_id"]]
    r = site_figures(scores, keep, {"cnn_a": 0.6, "gbdt": 0.5}, "site", "lesion_id", n_boot=200)
    assert [s["site"] for s in r["sites"]] == sorted(SITES)
    for s in r["sites"]:
        rows = scores[labels["site"].to_numpy() == s["site"]]
        assert s["images"] == len(rows) and s["malignant"] == int(rows["target"].sum())
        a = s["models"]["cnn_a"]
        assert a["roc_auc"] == round(roc_auc_score(rows["target"], rows["cnn_a"]), 4)
        assert a["roc_auc_ci95"][0] <= a["roc_auc"] <= a["roc_auc_ci95"][1]
        pos = rows["cnn_a"][rows["target"] == 1]
        assert a["sensitivity"] == round(float((pos >= 0.6).mean()), 4)
    pooled = r["pooled"]
    assert pooled["images"] == len(scores)
    assert pooled["models"]["cnn_a"]["roc_auc"] == round(roc_auc_score(scores["target"], scores["cnn_a"]), 4)
    assert pooled["models"]["cnn_a"]["roc_auc"] > 0.75 and 0.4 < pooled["models"]["gbdt"]["roc_auc"] < 0.6
    table = format_sites_table(r, ["cnn_a"])
    assert len(table.splitlines()) == 2 + len(SITES) + 1 and "**pooled (4 sites)**" in table


def test_figures_refuse_a_fold_with_two_sites_and_images_the_labels_do_not_name():
    labels = _labels()
    scores = _scores(labels)
    keep = labels.assign(image_id=image_ids(labels))[["image_id", "site", "lesion_id"]]
    mixed = scores.assign(fold=scores["fold"].where(labels["site"] != "west", 0))  # west scored in north's fold
    with pytest.raises(ValueError, match="folds holding more than one site: \\[0\\]"):
        site_figures(mixed, keep, {"cnn_a": 0.5}, "site", "lesion_id", n_boot=10)
    with pytest.raises(ValueError, match="scored images have no 'site'"):
        site_figures(scores, keep.iloc[10:], {"cnn_a": 0.5}, "site", "lesion_id", n_boot=10)


def test_the_command_names_the_flag_of_a_missing_folder_and_of_a_missing_site_column(tmp_path, capsys):
    assert main(["bench", "sites", "--data", str(tmp_path), "--workdir", str(tmp_path / "w")]) != 0
    assert f"{tmp_path}: no labels.csv (--data: a labelled image folder" in capsys.readouterr().err
    _labels().to_csv(tmp_path / "labels.csv", index=False)
    assert main(["bench", "sites", "--data", str(tmp_path), "--workdir", str(tmp_path / "w")]) != 0
    assert "no column 'ham_dataset' (--site)" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # nothing started


def test_the_report_of_a_finished_run_reads_its_params_metrics_and_scores(tmp_path):
    """`site_report` on a run folder: the exported model (evaluate's best when final.model is best),
    each model's threshold from metrics.json, the figures of its out-of-fold scores."""
    import json

    from lesion_ml import artefacts as cat
    from lesion_ml.app.bench_sites import site_report

    labels = _labels()
    scores = _scores(labels)
    (tmp_path / cat.OOF_SCORES).parent.mkdir(parents=True)
    scores.to_parquet(tmp_path / cat.OOF_SCORES)
    (tmp_path / cat.METRICS).parent.mkdir(parents=True)
    (tmp_path / cat.METRICS).write_text(json.dumps({"best_model": "cnn_a", "models": {
        "cnn_a": {"threshold": 0.55}, "gbdt": {"threshold": 0.5}}}))
    (tmp_path / "params.yaml").write_text("final: {model: best}\n")
    r = site_report(tmp_path, labels, "site", "lesion_id", recipe="r.yaml", data="d", seconds=12.34)
    assert r["exported_model"] == "cnn_a" and r["threshold"] == {"cnn_a": 0.55, "gbdt": 0.5} and r["seconds"] == 12.3
    pos = scores.loc[scores["target"] == 1, "cnn_a"]
    assert r["pooled"]["models"]["cnn_a"]["sensitivity"] == round(float((pos >= 0.55).mean()), 4)
    (tmp_path / "params.yaml").write_text("final: {model: gbdt}\n")
    r = site_report(tmp_path, labels, "site", "lesion_id", recipe="r.yaml", data="d", seconds=1)
    assert r["exported_model"] == "gbdt"
    from lesion_ml.app.bench_sites import table_models

    assert table_models(r) == ["gbdt"] and table_models({**r, "exported_model": "cnn_a"}) == ["cnn_a", "gbdt"]
