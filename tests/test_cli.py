from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from lesion_ml.app.cli import main


def test_synth_writes_a_demo_set(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--patients", "3", "--seed", "1"]) == 0
    meta = pd.read_csv(tmp_path / "train-metadata.csv")
    assert meta["patient_id"].nunique() == 3 and (tmp_path / "train-image.hdf5").is_file()
    assert "wrote" in capsys.readouterr().out


def test_synth_reports_bad_values_without_a_traceback(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--malignant-fraction", "1.5"]) == 2
    assert "--malignant-fraction: Input should be less than 1 (got 1.5)" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_loader_profiles_each_part_and_each_worker_count(tmp_path, capsys):
    import json

    out = tmp_path / "loader.json"
    assert main(["bench", "loader", "--size", "32", "--images", "48", "--batch-size", "8", "--workers", "0", "1",
                 "--epochs", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["images"] == 48 and set(r["loaders"]) == {"0", "1"}
    assert all(r["per_image_us"][k] > 0 for k in ("read", "decode", "transform", "collate"))
    for v in r["loaders"].values():
        assert v["startup_s"] > 0 and v["first_pass"] > 0 and v["later_passes"] > 0
    side = r["side_by_side"]
    assert set(side) == {"1"} and side["1"]["gain_vs_1"] == 1.0 and side["1"]["images_per_s"] > 0
    assert all(side["1"]["per_image_us"][k] > 0 for k in ("read", "decode", "transform"))
    out = capsys.readouterr().out
    assert "later" in out and "side by side" in out


@pytest.mark.slow
def test_bench_train_with_workers_measures_the_0_worker_input_path_too(tmp_path):
    import json

    out = tmp_path / "bench.json"
    assert main(["bench", "train", "--size", "32", "--batch-size", "4", "--steps", "2", "--rounds", "1",
                 "--workers", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    ips = r["images_per_s"]
    assert ips["input_only_0_workers"] > 0
    per_round = r["per_round"]  # one round: the median of its ratios is its ratio
    # the gain comes from the unrounded rates, per_round shows them to 0.01 images/s: equal to the
    # ratio of the shown rates within that rounding (it once differed by 0.001)
    ratio = per_round["input_only"][0] / per_round["input_only_0_workers"][0]
    assert r["input_gain_vs_0_workers"] == pytest.approx(ratio, abs=2e-3)


def test_bench_train_prints_both_rates_and_their_ratio(tmp_path, capsys):
    import json

    out = tmp_path / "bench.json"
    assert main(["bench", "train", "--size", "32", "--batch-size", "4", "--steps", "2", "--rounds", "1",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    ips = r["images_per_s"]
    assert all(ips[k] > 0 for k in ("bare", "end_to_end", "input_only", "inference"))
    assert r["ratio_end_to_end_vs_bare"] == round(ips["end_to_end"] / ips["bare"], 3)
    assert "ratio end-to-end / bare" in capsys.readouterr().out


def test_metrics_prints_one_row_per_model_best_first(tmp_path, capsys):
    import json

    m = {"roc_auc": 0.8, "pauc_80": 0.05, "pr_auc": 0.4, "recall": 0.7, "specificity": 0.9,
         "fold_roc_auc": {"0": 0.75, "1": None}}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"models": {"a": m, "b": {**m, "roc_auc": 0.9}}}))
    assert main(["metrics", str(path)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].startswith("b ") and rows[2].startswith("a ") and "0.750 n/a" in rows[2]
    assert main(["metrics", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_all_prints_one_table_with_every_part(tmp_path, capsys):
    import json

    out, params = tmp_path / "bench.json", tmp_path / "params.yaml"
    params.write_text("prepare: {select: {k: 6}}\ntrain_gbdt: {n_estimators: 20, seeds: [42]}\n")  # the tabular part's
    assert main(["bench", "all", "--backbones", "resnet18", "--size", "32", "--rows", "1100", "--steps", "2",
                 "--rounds", "1", "--images", "40", "--repo", str(tmp_path), "--params", str(params),
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r) >= {"tabular", "image_input", "train", "dvc_repro_noop", "cached_pipeline_rerun"}
    assert r["tabular"]["rows"] == 1100 and r["train"]["resnet18"]["images_per_s"]["bare"] > 0
    assert r["tabular"]["n_selected"] == 6  # the --params file's prepare.select.k
    assert r["image_input"]["images_per_s"]["decode"] > 0
    assert r["dvc_repro_noop"]["seconds"] is None and "no dvc.lock" in r["dvc_repro_noop"]["note"]
    assert r["cached_pipeline_rerun"]["seconds"] is None and "no dvc.lock" in r["cached_pipeline_rerun"]["note"]
    table = capsys.readouterr().out
    assert "train resnet18" in table and "no-op dvc repro" in table and "n/a" in table


def test_the_command_line_parser_imports_no_heavy_library():
    """`lesion predict` and every other command build the whole parser first: the benchmarks'
    options must not import torch and the rest (seconds of start-up) for every command."""
    code = ("import sys; from lesion_ml.app.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'torchvision', 'sklearn', 'lightgbm', 'pandas', 'cv2', 'h5py') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_help_ends_with_where_training_happens(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the epilog
    assert text.endswith("`lesion params --merge FILE` sets its params.") and "`dvc repro` (or `make run`)" in text
