"""Scheduled retraining: `dvc pull` (when a remote is configured), `dvc repro`, `dvc push`
(likewise), then the metrics and the report link as Prefect artefacts. Prefect's schedule and
DVC's lock never disagree: every run goes through `dvc repro`.

    python -m flows.retrain          # one run, now
    python -m flows.retrain serve    # serve the deployment retrain/<params.yaml retrain.name>
                                     # (stop it with Ctrl-C / SIGINT; `lesion server start` does this)
"""
from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from lesion_ml.config import load_params
from lesion_ml.dvc_cli import has_remote
from tasks import paths
from tasks.ops import dvc, publish_results


@flow(name="retrain")
def retrain_flow(pull: str = "auto", push: str = "auto", targets: list[str] | None = None) -> dict:
    """Bring data and artefacts up to date and rebuild what changed; publish the metrics."""
    remote = has_remote()
    if pull == "always" or (pull == "auto" and remote):
        dvc(["pull", "--allow-missing"])
    dvc(["repro", *(targets or [])])
    if push == "always" or (push == "auto" and remote):
        dvc(["push"])
    return publish_results(paths.REPORTS / "metrics.json", paths.REPORTS / "report.html",
                           paths.FINAL / "MODEL_CARD.md")


def serve(params: str = str(paths.PARAMS)) -> None:
    """Serve the deployment (blocks until SIGINT)."""
    cfg = load_params(params).retrain
    retrain_flow.serve(name=cfg.name, cron=cfg.cron, parameters={"pull": cfg.pull, "push": cfg.push,
                                                                  "targets": cfg.targets},
                       description=f"dvc repro of {Path.cwd().name}, scheduled by params.yaml retrain")


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    elif not sys.argv[1:]:
        cfg = load_params().retrain
        retrain_flow(cfg.pull, cfg.push, cfg.targets)
    else:
        sys.exit("usage: python -m flows.retrain [serve]")
