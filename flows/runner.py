"""Fan-out of independent tasks (folds, backbones): in turn in this process, or on a Dask cluster."""
from __future__ import annotations

from typing import Any

from prefect import flow

from lesion_ml.config import OrchestrationConfig


def visible_gpus(device: str) -> int:
    """How many CUDA GPUs the image tasks may use (0 for train_cnn.device: cpu or without CUDA)."""
    if device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count()


def gpu_worker_envs(n_gpus: int) -> list[dict[str, str]]:
    """The environment of each Dask worker when there are GPUs: one worker per GPU, pinned to it."""
    return [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(n_gpus)]


def gpu_cluster(envs: list[dict[str, str]]):
    """A local Dask cluster of one single-threaded worker process per entry of `envs` (each
    started with that environment), so that folds train in parallel, one per GPU."""
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {f"gpu{i}": {"cls": Nanny, "options": {"nthreads": 1, "env": env}} for i, env in enumerate(envs)}
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}})


def dask_runner(cfg: OrchestrationConfig, n_gpus: int = 0):
    """prefect-dask's task runner: the cluster at `dask_address`; else, with `n_gpus` GPUs, one
    local worker per GPU (`gpu_cluster`); else a LocalCluster of `dask_workers` single-threaded
    processes (torch and LightGBM use their own threads)."""
    from prefect_dask import DaskTaskRunner

    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    if n_gpus:
        return DaskTaskRunner(cluster_class=gpu_cluster, cluster_kwargs={"envs": gpu_worker_envs(n_gpus)})
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.dask_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def run_all(task: Any, calls: list[dict[str, Any]], cfg: OrchestrationConfig, *, name: str,
            n_gpus: int = 0) -> list[Any]:
    """`task(**kwargs)` for each entry of `calls`, results in order.

    local: called one after another (each a task run of the current flow). dask: submitted
    together from a subflow `name` whose task runner is the Dask cluster (one worker per GPU
    when `n_gpus` > 0 and no dask_address is set); payloads and results are small (paths,
    configs), the data stays in files.
    """
    if cfg.task_runner == "local":
        return [task(**kw) for kw in calls]

    @flow(name=name, task_runner=dask_runner(cfg, n_gpus))
    def fan_out() -> list[Any]:
        futures = [task.submit(**kw) for kw in calls]
        return [f.result() for f in futures]

    return fan_out()
