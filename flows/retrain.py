"""Scheduled retraining: `dvc pull` (when a remote is configured), `dvc repro`, `dvc push`
(likewise), then the metrics and the report link as Prefect artefacts. Prefect's schedule and
DVC's lock never disagree: every run goes through `dvc repro`.

    python -m flows.retrain          # one run, now
    python -m flows.retrain serve    # serve the deployment retrain/<params.yaml retrain.name>
                                     # (stop it with Ctrl-C / SIGINT; `lesion server start` does this)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE

from lesion_ml import artefacts as cat
from lesion_ml.app.dvc_cli import has_remote, run_dvc
from lesion_ml.config import load_params
from tasks.cache import IO_RETRIES


@task(cache_policy=NONE, **IO_RETRIES)
def dvc(args: list[str], repo: Path = Path(".")) -> str:
    """Run `dvc <args>` in `repo`; its output goes to the run log. Raises with the output's end on failure."""
    return run_dvc(args, repo)


@task(cache_policy=NONE)
def publish_results(metrics: Path, report: Path, card: Path) -> dict:
    """The out-of-fold comparison and the final model as Prefect artefacts of the run."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    from lesion_ml.evaluate.compare import metrics_markdown

    data = json.loads(metrics.read_text())
    text = metrics_markdown(data)
    if card.is_file():
        text += "\n\n" + card.read_text()
    create_markdown_artifact(key="retrain-metrics", markdown=text, description="out-of-fold metrics after retraining")
    create_link_artifact(key="retrain-report", link=report.resolve().as_uri(), link_text=report.name,
                         description="the HTML model comparison (a local file)")
    best = data["models"][data["best_model"]]
    return {"best_model": data["best_model"], "roc_auc": best["roc_auc"], "pauc_80": best["pauc_80"]}


@flow(name="retrain")
def retrain_flow(pull: str = "auto", push: str = "auto", targets: list[str] | None = None) -> dict:
    """Bring data and artefacts up to date and rebuild what changed; publish the metrics."""
    remote = has_remote()
    if pull == "always" or (pull == "auto" and remote):
        dvc(["pull", "--allow-missing"])
    dvc(["repro", *(targets or [])])
    if push == "always" or (push == "auto" and remote):
        dvc(["push"])
    return publish_results(metrics=cat.METRICS, report=cat.REPORT_HTML, card=cat.FINAL / "MODEL_CARD.md")


def serve(params: str = str(cat.PARAMS)) -> None:
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
