"""The fold tasks on a Dask LocalCluster (prefect-dask) give the local run's predictions."""
from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest
import yaml

from test_flows import _copy_repo, _tiny_params

pytestmark = pytest.mark.flow


def test_dask_local_cluster_matches_the_local_run(tmp_path, prefect_harness):
    from flows.ingest import ingest_flow
    from flows.split import split_flow
    from flows.train_cnn import train_cnn_flow
    from tasks import cache

    params = _tiny_params()
    params["train_cnn"]["models"] = {"tiny": {"backbone": "resnet18", "image_size": 32, "epochs": 1, "batch_size": 8}}
    _copy_repo(tmp_path, params)
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        ingest_flow()
        split_flow()
        cache.executed.clear()
        train_cnn_flow("tiny")
        assert cache.executed == ["train_cnn_fold", "train_cnn_fold", "combine_oof"]  # here, in turn
        local = pd.read_parquet("models/cnn/tiny/oof.parquet")

        for gone in ("models/cnn/tiny", ".lesion"):  # nothing cached, nothing to resume
            shutil.rmtree(gone)
        params["orchestration"] = {"task_runner": "dask", "dask_workers": 2}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        cache.executed.clear()
        train_cnn_flow("tiny")
        assert cache.executed == ["combine_oof"]  # the folds ran in the cluster's worker processes
        on_dask = pd.read_parquet("models/cnn/tiny/oof.parquet")
    finally:
        os.chdir(here)
    assert len(local) == len(on_dask) > 20 and local["pred"].nunique() > 1
    pd.testing.assert_frame_equal(local, on_dask)  # same seed, same predictions
