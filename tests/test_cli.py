from __future__ import annotations

import pandas as pd

from lesion_ml.cli import main


def test_synth_writes_a_demo_set(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--patients", "3", "--seed", "1"]) == 0
    meta = pd.read_csv(tmp_path / "train-metadata.csv")
    assert meta["patient_id"].nunique() == 3 and (tmp_path / "train-image.hdf5").is_file()
    assert "wrote" in capsys.readouterr().out


def test_synth_reports_bad_values_without_a_traceback(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--malignant-fraction", "1.5"]) == 2
    assert "malignant_fraction" in capsys.readouterr().err
