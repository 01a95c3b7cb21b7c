"""`lesion bench scale`: its measurements and its work folder. A whole run of it (every stage, then
`lesion predict`) is tests/flows/test_real_sample.py's, on the real ISIC 2024 sample."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lesion_ml.app import bench_scale as bs
from lesion_ml.app.bench_scale import format_scale_table, prepare_workdir, run_measured

CHILD = """
import subprocess, sys, time
a = bytearray(300 * 2**20)  # touched: resident
for i in range(0, len(a), 4096): a[i] = 1
kid = subprocess.Popen([sys.executable, "-c", "b = b'x' * (200 * 2**20); import time; time.sleep(1.5)"])
time.sleep(1.2)
kid.wait()
sys.exit(3)
"""


def test_run_measured_reports_the_largest_process_and_the_whole_tree(tmp_path):
    r = run_measured([sys.executable, "-c", CHILD], tmp_path, tmp_path / "logs/child.log", interval=0.1)
    assert r["returncode"] == 3 and r["seconds"] >= 1.2
    assert 0.28 <= r["peak_rss_gib"] < 0.45  # the 300 MiB parent, not the sum
    assert r["peak_rss_tree_gib"] >= 0.46  # parent and child at once
    assert (tmp_path / "logs/child.log").exists()


BUSY = """
import subprocess, sys, time
kid = subprocess.Popen([sys.executable, "-c", "import time\\nend = time.process_time() + 0.6\\nwhile time.process_time() < end: pass"])
time.sleep(0.8)  # waiting costs no CPU
kid.wait()
"""


def test_run_measured_counts_the_cpu_time_of_the_command_and_its_children(tmp_path):
    r = run_measured([sys.executable, "-c", BUSY], tmp_path, tmp_path / "logs/busy.log")
    assert r["returncode"] == 0, (tmp_path / "logs/busy.log").read_text()
    assert 0.6 <= r["cpu_seconds"] < 0.6 + 1.5  # the child's 0.6 s of CPU, plus two interpreters starting
    assert r["cpu_seconds"] < r["seconds"]  # the parent's sleep is wall time only


# A command as a stage run is: it starts a process of its own (as `dvc repro` starts the stage's
# Python), writes both pids, and waits. With STUBBORN both ignore SIGINT and SIGTERM (only SIGKILL ends them).
STAGE = """
import os, signal, subprocess, sys, time
if {stubborn}:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1] + ".tmp", "w").write(f"{{os.getpid()}} {{kid.pid}}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
kid.wait()
"""
# `lesion bench scale`'s measured run of that command, in a process of its own (the bench), with the
# stop's grace periods shortened from 20 and 10 s. The bench takes Ctrl-C as it does in a terminal:
# a test session started as a background job of a script (as CI may start it) ignores SIGINT, and
# every process it starts inherits that.
BENCH = """
import signal, sys
from pathlib import Path
from lesion_ml.app import children
from lesion_ml.app.bench_scale import run_measured
children.STOP_STEPS = ((signal.SIGINT, 1.0), (signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0))
signal.signal(signal.SIGINT, signal.default_int_handler)
folder = Path(sys.argv[1])
run_measured([sys.executable, "-c", sys.argv[2], str(folder / "pids")], folder, folder / "stage.log")
"""


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has ended


@pytest.mark.parametrize("signum, stubborn", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["sigterm", "ctrl-c-stubborn-stage"])
def test_an_interrupted_bench_leaves_no_stage_process_running(tmp_path, signum, stubborn):
    """A SIGTERM (a scheduler, `kill`) or a Ctrl-C's SIGINT to the bench stops the command it runs
    and every process that command started (SIGINT, then SIGTERM, then SIGKILL) before the bench
    exits. Before children.py, the command and its stage went on running without the bench."""
    import subprocess
    import time

    bench = subprocess.Popen([sys.executable, "-c", BENCH, str(tmp_path), STAGE.format(stubborn=stubborn)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids_file, deadline = tmp_path / "pids", time.monotonic() + 60
    while not pids_file.exists():
        assert bench.poll() is None and time.monotonic() < deadline, bench.communicate()[0][-3000:]
        time.sleep(0.05)
    stage, kid = map(int, pids_file.read_text().split())
    try:
        assert _running(stage) and _running(kid)
        bench.send_signal(signum)
        out = bench.communicate(timeout=60)[0]
        assert bench.returncode == (143 if signum == signal.SIGTERM else -signal.SIGINT), out[-3000:]
        ended = time.monotonic() + 5  # an orphan may take a moment to be reaped
        while (_running(stage) or _running(kid)) and time.monotonic() < ended:
            time.sleep(0.05)
        assert not _running(stage) and not _running(kid), out[-3000:]
    finally:  # whatever failed, nothing of the test goes on running
        for pid in (bench.pid, stage, kid):
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_prepare_workdir_links_the_data_and_merges_the_profile(tmp_path):
    data = tmp_path / "full"
    data.mkdir()
    overrides = tmp_path / "profile.yaml"
    overrides.write_text(yaml.safe_dump({"data": {"source": "isic2024"}, "evaluate": {"bootstrap": 7},
                                         "train_cnn": {"models": {"only": {"backbone": "resnet18"}}}}))
    work = tmp_path / "work"
    work.mkdir()
    params = prepare_workdir(REPO, work, data, overrides)
    written = yaml.safe_load((work / "params.yaml").read_text())
    assert written == params
    assert list(params["train_cnn"]["models"]) == ["only"]  # the model list is replaced, not merged
    assert params["evaluate"]["bootstrap"] == 7 and params["evaluate"]["select_metric"] == "pauc_80"
    assert (work / "data/raw/isic2024").resolve() == data.resolve() and params["data"]["path"] == "data/raw/isic2024"
    assert (work / "dvc.yaml").is_file() and (work / ".git").is_dir()
    assert not (work / "tests").exists() and not (work / "dvc.lock").exists()
    prepare_workdir(REPO, work, data, overrides)  # again over the same folder (a continued run)


def test_predict_only_keeps_the_stage_figures_of_a_finished_run(tmp_path):
    """--predict-only takes the stage figures from the earlier run's JSON, and refuses when the
    stages differ or no model was exported in the work folder."""
    from lesion_ml.app.bench_scale import _keep_earlier_stages

    out, work = tmp_path / "scale.json", tmp_path / "work"
    stages = [{"stage": "ingest", "seconds": 3.0}, {"stage": "final", "seconds": 9.0}]
    out.write_text(json.dumps({"stages": stages}))
    with pytest.raises(ValueError, match="needs a finished run"):
        _keep_earlier_stages({}, ["ingest", "final"], work, out)  # no models/final yet
    (work / "models/final").mkdir(parents=True)
    (work / "models/final/manifest.json").write_text("{}")
    result: dict = {}
    _keep_earlier_stages(result, ["ingest", "final"], work, out)
    assert result == {"stages": stages, "predict_rerun": True}
    with pytest.raises(ValueError, match="needs a finished run"):
        _keep_earlier_stages({}, ["ingest", "split", "final"], work, out)  # another stage list


def test_the_image_pass_seconds_are_read_from_the_predict_log():
    from lesion_ml.app.bench_scale import image_pass_seconds

    log = ("INFO lesion_ml.model.predict: image pass cnn_a+cnn_b: 401059 images in 380.5 s (1054 images/s)\n"
           "predict cnn_a+cnn_b: 100%|##########| 1567/1567\n"
           "INFO lesion_ml.model.predict: image pass cnn_c: 401059 images in 20.0 s (20053 images/s)\n")
    assert image_pass_seconds(log) == 400.5
    assert image_pass_seconds("wrote predictions.csv: 90 images\n") is None


def test_predict_is_compared_with_bare_rates_taken_before_and_after_it(tmp_path, monkeypatch):
    """The bare rate is timed on both sides of the command and the ratio is to their mean, with
    the range against each; the image pass uses the same mean."""
    rates = iter([1000.0, 1500.0])  # before, after
    monkeypatch.setattr(bs, "_predict_bare", lambda model, batch: next(rates))

    def fake_predict(cmd, cwd, log, env=None):
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("INFO lesion_ml.model.predict: image pass cnn_a+cnn_b: 1200 images in 1.0 s (1200 images/s)\n")
        return {"returncode": 0, "seconds": 1.2, "peak_rss_gib": 0.1, "peak_rss_tree_gib": 0.1, "cpu_seconds": 1.8}

    monkeypatch.setattr(bs, "run_measured", fake_predict)
    monkeypatch.setattr(bs.os, "sched_getaffinity", lambda pid: {0, 1})
    r = bs._run_predict(tmp_path / "data", tmp_path, {}, 1, 64, {"data": {"lesions": 1200}}, None)
    assert next(rates, None) is None  # measured twice
    assert (r["bare_before_per_s"], r["bare_after_per_s"], r["bare_forward_per_s"]) == (1000.0, 1500.0, 1250.0)
    assert r["images_per_s"] == 1000.0 and r["ratio_vs_bare"] == 0.8
    assert r["ratio_vs_bare_range"] == [0.667, 1.0]
    assert r["image_pass_seconds"] == 1.0 and r["image_pass_ratio_vs_bare"] == 0.96
    assert r["cpu_us_per_image"] == 1500.0 and r["cores_busy"] == 0.75  # 1.8 core-s in 1.2 s on 2 cores
    table = format_scale_table({"data": {"lesions": 1200, "patients": 1, "malignant": 1}, "stages": [], "predict": r})
    assert "mean of 1,000 before and 1,500 after" in table and "1,500 core-us an image; the cores 75% busy" in table


def test_a_model_without_image_networks_has_no_bare_comparison(tmp_path, monkeypatch):
    monkeypatch.setattr(bs, "_predict_bare", lambda model, batch: None)
    monkeypatch.setattr(bs, "run_measured", lambda *a, **k: {"returncode": 0, "seconds": 2.0, "peak_rss_gib": 0.1,
                                                             "peak_rss_tree_gib": 0.1})
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/predict.log").write_text("wrote predictions.csv\n")
    r = bs._run_predict(tmp_path / "data", tmp_path, {}, 1, 64, {"data": {"lesions": 10}}, None)
    assert r["ratio_vs_bare"] is None and r["bare_forward_per_s"] is None and "image_pass_seconds" not in r
    assert "no image network" in format_scale_table(
        {"data": {"lesions": 10, "patients": 1, "malignant": 1}, "stages": [], "predict": r})
