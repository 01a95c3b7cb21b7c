"""Content-keyed task caching, through flows/pipeline.py runs in a copy of the tiny demo build: in
this process while only data and params change, and as `python -m flows.pipeline` in the copy once
its library code is edited (the process must import the edited code)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import TINY_PARAMS, copy_build, tiny_params

pytestmark = pytest.mark.flow


# `python -m flows.pipeline` without flow-run heartbeats, as the flows in the test processes run
# (conftest.prefect_harness): each of its ten stage subflows would wait up to 1 s at its end for
# the heartbeat thread, and Prefect reads no "off" from the environment
PIPELINE = ("import runpy\n"
            "from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings\n"
            "with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):\n"
            "    runpy.run_module('flows.pipeline', run_name='__main__', alter_sys=True)\n")


def _run(root, api_url: str) -> list[str]:
    env = dict(os.environ, PREFECT_API_URL=api_url, PYTHONPATH=str(root))
    run = subprocess.run([sys.executable, "-c", PIPELINE], cwd=root, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    line = re.search(r"^tasks run: (\d+) \((.*)\)$", run.stdout, re.M)
    assert line, run.stdout[-2000:]
    return [] if line.group(1) == "0" else line.group(2).split(", ")


def _run_here(root) -> list[str]:
    """flows/pipeline.py in this process, in `root`; the tasks that ran."""
    from flows.pipeline import pipeline_flow
    from tasks.cache import executed

    here = os.getcwd()
    os.chdir(root)
    try:
        executed.clear()
        pipeline_flow()
        return list(executed)
    finally:
        os.chdir(here)


def test_reruns_only_what_changed(tmp_path, demo_build, prefect_api_url):
    """On a copy of the tiny demo build (its run filled the task cache): the pipeline runs only
    what each change touches."""
    api_url = prefect_api_url
    params = tiny_params()
    copy_build(demo_build, tmp_path)
    assert yaml.safe_load((tmp_path / "params.yaml").read_text()) == params
    # (that a copy with nothing changed runs no task at all is tests/flows/test_flows.py's first check)
    assert (tmp_path / ".lesion/prefect/keys").is_dir() and not (tmp_path / "models/.lesion").exists()

    # two changes in one run. An output deleted (as `dvc repro` does to a stage's outs): only the task
    # that wrote it reruns, and it writes the same bytes, so nothing downstream of it reruns. One
    # backbone's params: its folds, its OOF table, then evaluate and final; not the other backbone.
    (tmp_path / "models/gbdt/pred_fold1.parquet").unlink()
    params["train_cnn"]["models"]["tiny"]["lr"] = 0.002
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    changed = _run_here(tmp_path)
    assert changed.count("train_gbdt_fold") == 1 and (tmp_path / "models/gbdt/pred_fold1.parquet").is_file()
    assert changed.count("train_cnn_fold") == 2 and changed.count("combine_oof") == 1  # tiny's, not the GBDT's
    assert {"evaluate_models", "export_final"} <= set(changed)
    assert not {"prepare_fold", "ingest_source", "make_folds"} & set(changed)
    assert set(TINY_PARAMS["train_cnn"]["models"]) == {"tiny", "tiny_fusion"}

    # a lesion_ml function the LightGBM tasks use: they rerun, the ingest and image tasks do not
    gbdt = tmp_path / "lesion_ml/tabular/gbdt.py"
    gbdt.write_text(gbdt.read_text().replace('"""Malignancy probabilities (mean over seeds)."""',
                                             '"""Malignancy probabilities: the mean over seeds."""'))
    edited = _run(tmp_path, api_url)
    assert edited.count("train_gbdt_fold") == 2
    assert not {"generate_demo", "ingest_source", "make_folds", "prepare_fold", "train_cnn_fold"} & set(edited)
