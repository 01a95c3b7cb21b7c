"""report.html rendered by a real browser: headless Chromium (Debian's chromium package)."""
from __future__ import annotations

import shutil
import subprocess

import cv2
import numpy as np
import pandas as pd
import pytest

from lesion_ml.evaluate.analysis import bootstrap_intervals, calibration, subgroup_table
from lesion_ml.evaluate.metrics import classification_metrics
from lesion_ml.evaluate.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (apt-get install chromium; .ci/run does)")
def test_report_renders_its_plots_in_headless_chromium(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.2).astype(int)
    scores = {"gbdt": 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1, 400)))), "cnn_x": rng.random(400)}
    g = np.array([f"P{i // 4}" for i in range(400)])
    models = {}
    for name, p in scores.items():
        m = classification_metrics(y, p, 0.4)
        cal = calibration(y, p)
        m.update(fold_roc_auc={"0": m["roc_auc"]}, ci95=bootstrap_intervals(y, p, g, 0.4, 20), calibration=cal)
        models[name] = m
    html = build_report(y, scores, models, {"gbdt": subgroup_table(pd.DataFrame({"target": y, "sex": "male"}),
                                                                   scores["gbdt"], 0.4)},
                        {"a": 1.0}, {"n": 400, "n_malignant": int(y.sum()), "n_patients": 100, "n_folds": 1,
                                     "n_boot": 20, "threshold_rule": "test"})
    (tmp_path / "report.html").write_text(html)
    shot = tmp_path / "shot.png"
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--screenshot={shot}", "--window-size=1200,2600", (tmp_path / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.is_file(), run.stderr[-2000:]
    img = cv2.imread(str(shot))[..., ::-1].astype(int)  # RGB
    # matplotlib's first two line colours (tab:blue, tab:orange) only appear if the PNGs rendered
    blue = (np.abs(img - [31, 119, 180]).sum(axis=2) < 40).sum()
    orange = (np.abs(img - [255, 127, 14]).sum(axis=2) < 40).sum()
    assert blue > 500 and orange > 500, (blue, orange)
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (tmp_path / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "<h2>Comparison</h2>" in dom and dom.count("<img") == 5
