"""`dvc repro` and its companions on the tiny demo build: the no-op run, an experiment, a stage
with and without a shared Prefect server, and the retraining deployment served by `lesion server` (each test that
changes the build on its own copy). Its own file, so pytest-xdist runs it beside test_flows.py."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import copy_build, copy_repo, tiny_params
from conftest import dvc as _dvc

from lesion_ml.artefacts import SERVER

pytestmark = pytest.mark.flow

BATCH = "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"  # one of lesion_ml/app/server.py PREFECT_DEFAULTS
MODELS = {"gbdt", "cnn_tiny", "cnn_tiny_fusion", "ensemble_mean", "ensemble_rank", "stack_gbdt_images"}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A copy of the repository's tracked files with tiny params, as its own git repo."""
    copy_repo(tmp_path, tiny_params())
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def reproduced(demo_build, tmp_path):
    """A copy of the tiny demo build (its dvc.lock recorded), for a test that changes it."""
    return copy_build(demo_build, tmp_path / "repo")


def test_the_demo_builds_figures_and_a_dvc_repro_with_nothing_to_do(demo_build):
    """Every figure of reports/metrics.json is what the out-of-fold scores evaluate wrote give
    again (ranking metrics, and the confusion matrix at the threshold), every model's threshold
    keeps 95% sensitivity there, no report names a patient, and `dvc repro` finds nothing to do
    (what `dvc commit` recorded is what the stages' dependencies and outputs are)."""
    from sklearn.metrics import roc_auc_score

    from lesion_ml.evaluate.metrics import partial_auc

    workdir = demo_build
    metrics = json.loads((workdir / "reports/metrics.json").read_text())["models"]
    assert set(metrics) == MODELS
    scores = pd.read_parquet(workdir / "models/oof_scores.parquet")
    y = scores["target"].to_numpy()
    for name, m in metrics.items():
        p = scores[name].to_numpy()
        assert m["n"] == len(y) and m["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12), name
        assert m["pauc_80"] == pytest.approx(partial_auc(y, p), abs=1e-12), name
        flag = p >= m["threshold"]
        assert m["confusion_matrix"] == [[int((~flag & (y == 0)).sum()), int((flag & (y == 0)).sum())],
                                         [int((~flag & (y == 1)).sum()), int((flag & (y == 1)).sum())]], name
        assert m["recall"] == flag[y == 1].mean() >= 0.95 and set(m["ci95"]) >= {"roc_auc", "sensitivity"}
    # reports and plots carry counts and metrics, never a patient identifier
    patients = set(pd.read_parquet(workdir / "data/processed/folds.parquet")["patient_id"].astype(str))
    assert json.loads((workdir / "models/final/manifest.json").read_text())["model"] == "stack_gbdt_images"
    for path in [*(workdir / "reports").rglob("*"), *(workdir / "models/final").glob("*.json"),
                 workdir / "models/final/MODEL_CARD.md"]:
        if path.is_file():
            text = path.read_text()
            leaked = [p for p in patients if p in text]
            assert not leaked, f"{path} names patients {leaked[:3]}"
    again = _dvc("repro", cwd=workdir)
    assert again.returncode == 0 and "Data and pipelines are up to date" in again.stdout, again.stdout


def test_a_dvc_experiment_reruns_the_threshold_stage_and_what_follows(reproduced, prefect_api_url):
    """On its own copy of the build: `dvc exp run` with another target sensitivity reruns evaluate,
    final and validate, and `dvc params diff` / `dvc metrics diff` show what it changed."""
    workdir = reproduced
    git = ["git", "-c", "user.name=lesion-ml test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "add", "-A"], cwd=workdir, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "baseline"], cwd=workdir, check=True)
    before = json.loads((workdir / "reports/metrics.json").read_text())["models"]["gbdt"]["threshold"]
    exp = _dvc("exp", "run", "-S", "evaluate.target_sensitivity=0.8", cwd=workdir, api_url=prefect_api_url)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    ran = set(re.findall(r"^Running stage '([^']+)'", exp.stdout, re.M))
    assert ran == {"evaluate", "final", "validate@demo"}, exp.stdout[-3000:]  # the threshold's stage and after
    params = _dvc("params", "diff", cwd=workdir)
    assert "evaluate.target_sensitivity" in params.stdout and "0.95" in params.stdout and "0.8" in params.stdout
    diff = _dvc("metrics", "diff", "--json", cwd=workdir)
    changed = json.loads(diff.stdout)["reports/metrics.json"]
    after = json.loads((workdir / "reports/metrics.json").read_text())["models"]["gbdt"]["threshold"]
    assert after >= before and "models.gbdt.threshold" in changed
    # the external set's figures are DVC metrics too, rescored with the new final model's threshold
    external = json.loads(_dvc("metrics", "diff", "--all", "--json", cwd=workdir).stdout)["reports/external/demo.json"]
    assert external["threshold"]["new"] == json.loads((workdir / "models/final/manifest.json").read_text())["threshold"]
    assert {"roc_auc", "sensitivity", "oof_sensitivity", "calibration_slope"} <= set(external)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, body: dict | None = None):
    import urllib.request

    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _processes_mentioning(*needles: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(n in text for n in needles):
            found.append(f"{cmdline.parent.name}: {text[:200]}")
    return found


def test_lesion_server_run_stops_its_server_when_it_is_terminated(tmp_path, fresh_prefect_home):
    """A SIGTERM to `lesion server run` (a scheduler ending the job) reaches the command, and the
    temporary server is stopped before it exits: no process is left behind."""
    import select
    import signal

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API") and k != BATCH}
    env.update(PREFECT_HOME=str(fresh_prefect_home))
    command = [sys.executable, "-c", "import time; print('command started', flush=True); time.sleep(300)"]
    proc = subprocess.Popen([f"{os.path.dirname(sys.executable)}/lesion", "server", "run", "--", *command],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, port = "", None
    try:
        while "command started" not in seen:
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            assert ready and proc.poll() is None, seen[-2000:]
            seen += proc.stdout.readline()
        port = re.search(r"Starting temporary server on http://127.0.0.1:(\d+)", seen).group(1)
        assert _processes_mentioning("uvicorn", f"--port {port}")  # the server runs beside the command
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM  # the command's end, as a shell reports it
    finally:
        proc.kill()
    assert not _processes_mentioning("uvicorn", f"--port {port}")
    assert not _processes_mentioning("command started")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (apt-get install chromium; .ci/run does)")
def test_server_serves_the_retrain_deployment_and_stops_cleanly(reproduced, tmp_path, fresh_prefect_home):
    root = reproduced
    remote = tmp_path / "remote"
    assert _dvc("remote", "add", "-d", "local", str(remote), cwd=root).returncode == 0
    port = _free_port()
    bin_dir = os.path.dirname(sys.executable)
    # the served runner looks for scheduled runs every second (default 10 s): the run starts at once
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PREFECT_HOME=str(fresh_prefect_home),
               PREFECT_RUNNER_POLL_FREQUENCY="1")
    env.pop("PREFECT_API_URL", None)
    env.pop(BATCH)  # the tests' own environment sets it (conftest); `lesion server start` must
    api = f"http://127.0.0.1:{port}/api"
    start = subprocess.run([f"{bin_dir}/lesion", "server", "start", "--port", str(port)], cwd=root, env=env,
                           capture_output=True, text=True, timeout=300)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        assert f"http://127.0.0.1:{port}" in start.stdout and "retrain/demo" in start.stdout
        server_pid = (root / SERVER / "server.pid").read_text().strip()
        assert f"{BATCH}=100".encode() in Path(f"/proc/{server_pid}/environ").read_bytes().split(b"\0")
        run = subprocess.run([f"{bin_dir}/prefect", "deployment", "run", "retrain/demo", "--watch",
                              "--watch-interval", "1", "--watch-timeout", "600"], cwd=root, env=dict(env, PREFECT_API_URL=api),
                             capture_output=True, text=True, timeout=700)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        runs = _api(f"{api}/flow_runs/filter", {"flows": {"name": {"any_": ["retrain"]}}})
        states = sorted(r["state_type"] for r in runs)  # the one we ran, and the cron schedule's next runs
        assert states.count("COMPLETED") == 1 and "SCHEDULED" in states and set(states) <= {"COMPLETED", "SCHEDULED"}
        keys = {a["key"] for a in _api(f"{api}/artifacts/filter", {})}
        assert {"retrain-metrics", "retrain-report"} <= keys
        assert any(p.is_file() for p in remote.rglob("*"))  # dvc push reached the remote
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
                              "--dump-dom", f"http://127.0.0.1:{port}/deployments"],
                             capture_output=True, text=True, timeout=120).stdout
        assert "Deployments" in dom and "demo" in dom and "retrain" in dom, dom[-2000:]
        assert "Can't connect to Server API" not in dom
    finally:
        stop = subprocess.run([f"{bin_dir}/lesion", "server", "stop"], cwd=root, env=env, capture_output=True,
                              text=True, timeout=120)
    assert stop.returncode == 0 and "retrain" in stop.stdout and "server" in stop.stdout, stop.stdout + stop.stderr
    assert _processes_mentioning(f"--port {port}") == [] and _processes_mentioning("flows.retrain", "serve") == []
    import urllib.error

    with pytest.raises(urllib.error.URLError):
        _api(f"{api}/health")


def test_a_stage_finds_a_prefect_api_by_hand_and_under_make_run(workdir, fresh_prefect_home):
    """Run by hand without PREFECT_API_URL (`python -m flows.X`, a plain `dvc repro`), a stage
    starts Prefect's temporary server, runs its flow through it and stops it again. Under `make run`
    (`lesion server run -- dvc repro`), the stages share one server started for the command; it is
    stopped afterwards, and every stage's run stays in PREFECT_HOME's database for the UI."""
    import sqlite3

    home = fresh_prefect_home
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API") and k != BATCH}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(workdir),
               PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    run = subprocess.run([sys.executable, "-m", "flows.ingest"], cwd=workdir, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "Starting temporary server" in run.stdout + run.stderr
    assert "Finished in state Completed" in run.stdout + run.stderr
    table = pd.read_parquet(workdir / "data/interim/lesions.parquet")
    report = json.loads((workdir / "reports/ingest.json").read_text())
    assert report["n_images"] == len(table) > 0
    assert (workdir / ".lesion/prefect/keys").is_dir()  # the task cache recorded its results
    assert not _processes_mentioning("prefect", "server", env["PREFECT_HOME"])  # the server was stopped

    two = "python -m flows.split && python -m flows.split"  # two stage processes, one server
    shared = subprocess.run([f"{os.path.dirname(sys.executable)}/lesion", "server", "run", "--", "sh", "-c", two],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    out = shared.stdout + shared.stderr
    assert shared.returncode == 0, out[-3000:]
    assert out.count("Starting temporary server") == 1 and "a temporary server for this command" in out
    assert out.count("Beginning flow run") == 2 and (workdir / "data/processed/folds.parquet").is_file()
    port = re.search(r"Starting temporary server on http://127.0.0.1:(\d+)", out).group(1)
    assert not _processes_mentioning("uvicorn", f"--port {port}")  # stopped when the command ended
    with sqlite3.connect(home / "prefect.db") as db:
        runs = db.execute("select flow.name, flow_run.state_type from flow_run join flow on flow.id = "
                          "flow_run.flow_id").fetchall()
    assert sorted(runs) == [("ingest", "COMPLETED"), ("split", "COMPLETED"), ("split", "COMPLETED")]
    # the task runs too: the server's recorder writes them in batches (lesion_ml/app/server.py PREFECT_DEFAULTS), the
    # last one as the server stops
    with sqlite3.connect(home / "prefect.db") as db:
        done = db.execute("select flow_run_id, count(*) from task_run where state_type = 'COMPLETED' "
                          "group by flow_run_id").fetchall()
    assert len(done) == 3, done
