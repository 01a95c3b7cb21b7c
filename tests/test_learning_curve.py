"""`lesion bench curve`'s subsets and table (its whole run takes 40 minutes: docs/validation.md)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lesion_ml.app.bench_curve import format_curve_table, nested_subsets, write_subset
from lesion_ml.app.cli import main


def _labels(n_lesions: int = 700, seed: int = 3) -> pd.DataFrame:
    """HAM10000-like labels: lesions with 1-3 images each, 45 % of the lesions malignant."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_lesions):
        target = int(rng.random() < 0.45)
        rows += [{"image_file": f"images/l{k}_{i}.jpg", "lesion_id": f"L{k}", "target": target}
                 for i in range(rng.integers(1, 4))]
    return pd.DataFrame(rows)


def test_the_subsets_are_nested_keep_lesions_whole_and_keep_the_class_shares():
    labels = _labels()
    subsets = nested_subsets(labels, [1000, 200, 500], seed=0, group="lesion_id")
    assert list(subsets) == [200, 500, 1000]
    ids = {n: set(s["image_file"]) for n, s in subsets.items()}
    assert ids[200] < ids[500] < ids[1000] <= set(labels["image_file"])
    share = labels["target"].mean()
    for n, rows in subsets.items():
        assert abs(len(rows) - n) <= 6, n  # whole lesions: at most one more per class (3 images each)
        assert abs(rows["target"].mean() - share) < 0.02, n
        inside = labels["lesion_id"].isin(rows["lesion_id"])
        assert set(labels.loc[inside, "image_file"]) == ids[n]  # no lesion split between in and out
    again = nested_subsets(labels, [500], seed=0, group="lesion_id")[500]
    other = nested_subsets(labels, [500], seed=1, group="lesion_id")[500]
    assert set(again["image_file"]) == ids[500] and set(other["image_file"]) != ids[500]


def test_subsets_refuse_a_size_beyond_the_set_and_an_unknown_column():
    labels = _labels(50)
    with pytest.raises(ValueError, match=r"--sizes 5000: larger than the set \(\d+ images\)"):
        nested_subsets(labels, [5000], seed=0, group="lesion_id")
    with pytest.raises(ValueError, match="no column 'patient'.*--group"):
        nested_subsets(labels, [10], seed=0, group="patient")


def test_a_subset_folder_holds_its_images_and_labels(tmp_path):
    source = tmp_path / "set"
    labels = _labels(20)
    for rel in labels["image_file"]:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(rel.encode())
    rows = nested_subsets(labels, [10], seed=0, group="lesion_id")[10]
    write_subset(rows, source, tmp_path / "sub", "image_file")
    assert pd.read_csv(tmp_path / "sub/labels.csv").equals(rows.reset_index(drop=True))
    assert sorted(p.name for p in (tmp_path / "sub/images").iterdir()) == sorted(r.split("/")[1] for r in rows["image_file"])
    assert all((tmp_path / "sub" / r).read_bytes() == r.encode() for r in rows["image_file"])


def test_the_table_has_one_row_per_size():
    fig = {"roc_auc": 0.8123, "roc_auc_ci95": [0.79, 0.83], "sensitivity": 0.951, "specificity": 0.402}
    r = {"external": "isic-uda1-555", "sizes": [
        {"images": 400, "malignant": 188, "seconds": 330.0, "oof": fig, "external": dict(fig, roc_auc=0.75)},
        {"images": 2000, "malignant": 938, "seconds": 1350.0, "oof": dict(fig, roc_auc=0.9), "external": fig}]}
    table = format_curve_table(r).splitlines()
    assert len(table) == 4 and "isic-uda1-555 ROC-AUC" in table[0]
    assert table[2].startswith("| 400 (188) | 0.812 [0.790, 0.830] | 0.95 / 0.40 | 0.750 [0.790, 0.830]")
    assert table[3].startswith("| 2,000 (938) | 0.900") and table[3].endswith("| 0.95 / 0.40 |")


def test_the_command_names_the_flag_of_a_missing_folder(tmp_path, capsys):
    assert main(["bench", "curve", "--data", str(tmp_path), "--external", str(tmp_path), "--workdir",
                 str(tmp_path / "w")]) != 0
    assert f"{tmp_path}: no labels.csv (--data: a labelled image folder" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # nothing started
