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


def test_one_dask_worker_per_gpu_each_pinned_to_its_own(monkeypatch):
    from distributed import Client

    from lesion_ml.config import OrchestrationConfig
    from flows import runner

    cfg = OrchestrationConfig(task_runner="dask", dask_workers=5)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 3)  # as on a machine with 3 GPUs
    assert runner.visible_gpus("auto") == 3 and runner.visible_gpus("cpu") == 0
    task_runner = runner.dask_runner(cfg, runner.visible_gpus("auto"))
    assert task_runner.cluster_kwargs == {"envs": runner.gpu_worker_envs(3)}  # not dask_workers
    with runner.gpu_cluster(runner.gpu_worker_envs(3)) as cluster, Client(cluster) as client:
        seen = client.run(lambda: (os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")))
    assert sorted(device for _, device in seen.values()) == ["0", "1", "2"]  # each worker sees one GPU
    assert len({pid for pid, _ in seen.values()} | {os.getpid()}) == 4  # in processes of their own
    no_gpu = runner.dask_runner(cfg, 0)
    assert no_gpu.cluster_kwargs["n_workers"] == 5
