"""The demo's committed reports are the pipeline's output for the committed code and params (DVC's
lock says so), and they meet the demo's floors: the figures a reader sees are true for this version."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from conftest import REPO, copy_repo, dvc

FLOOR_ROC_AUC = 0.80  # every model of the demo, out of fold
DATA = ("data/", "models/")  # outputs and data a fresh clone does not hold


@pytest.fixture(scope="module")
def status(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("clone")
    copy_repo(root, yaml.safe_load((REPO / "params.yaml").read_text()))
    run = dvc("status", "--json", cwd=root)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout or "{}")


def _stale(entries: list) -> dict[str, str]:
    """What changed since dvc.lock was written, leaving out data and models a clone lacks."""
    out = {}
    for entry in entries:
        for kind in ("changed deps", "changed outs"):
            for path, why in (entry.get(kind) or {}).items() if isinstance(entry, dict) else ():
                if not (path.startswith(DATA) and why in ("deleted", "not in cache")):
                    out[path] = why
    return out


def test_the_committed_reports_are_the_pipelines_output_for_this_code_and_params(status):
    """dvc.lock records the code, lock file and params each stage ran with, and the reports it
    wrote: none of them may differ from what is committed (run `make run` and commit dvc.lock and
    reports/ after changing the pipeline's code or params)."""
    stale = {stage: changes for stage, entries in status.items() if (changes := _stale(entries))}
    assert stale == {}, f"the demo reports are stale: {stale}; run `make run` and commit dvc.lock and reports/"


def test_every_demo_model_meets_the_floor():
    metrics = json.loads((REPO / "reports/metrics.json").read_text())
    low = {n: m["roc_auc"] for n, m in metrics["models"].items() if not m["roc_auc"] >= FLOOR_ROC_AUC}
    assert len(metrics["models"]) >= 6 and low == {}, low
    assert metrics["best_model"] == metrics["selection"]["chosen"] in metrics["models"]


def test_the_reports_are_tracked_where_dvc_writes_them():
    tracked = subprocess.run(["git", "ls-files", "reports", "dvc.lock"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert {"dvc.lock", "reports/metrics.json", "reports/evaluation.json"} <= set(tracked)


def test_the_readme_demo_table_is_what_lesion_metrics_prints_from_the_committed_reports():
    from lesion_ml.evaluate.compare import metrics_text

    readme = (REPO / "README.md").read_text()
    table = metrics_text(json.loads((REPO / "reports/metrics.json").read_text()))
    assert "```\n" + table + "\n```" in readme
    ingest = json.loads((REPO / "reports/ingest.json").read_text())
    counts = f"{ingest['n_images']:,} lesions, {ingest['n_malignant']:,} malignant, {ingest['n_patients']:,} patients"
    assert f"On the demo set ({counts}: `reports/ingest.json`)" in readme
