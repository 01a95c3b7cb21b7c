"""Fan-out of independent tasks (folds, backbones): in turn in this process, or on a Dask cluster."""
from __future__ import annotations

from typing import Any

from prefect import flow

from lesion_ml.config import OrchestrationConfig


def dask_runner(cfg: OrchestrationConfig):
    """prefect-dask's task runner: the cluster at `dask_address`, else a LocalCluster of
    `dask_workers` single-threaded processes (torch and LightGBM use their own threads)."""
    from prefect_dask import DaskTaskRunner

    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.dask_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def run_all(task: Any, calls: list[dict[str, Any]], cfg: OrchestrationConfig, name: str) -> list[Any]:
    """`task(**kwargs)` for each entry of `calls`, results in order.

    local: called one after another (each a task run of the current flow). dask: submitted
    together from a subflow `name` whose task runner is the Dask cluster; payloads and results
    are small (paths, configs), the data stays in files.
    """
    if cfg.task_runner == "local":
        return [task(**kw) for kw in calls]

    @flow(name=name, task_runner=dask_runner(cfg))
    def fan_out() -> list[Any]:
        futures = [task.submit(**kw) for kw in calls]
        return [f.result() for f in futures]

    return fan_out()
