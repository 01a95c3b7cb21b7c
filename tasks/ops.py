"""Tasks of the retraining flow: DVC commands and publishing the results."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from lesion_ml.dvc_cli import run_dvc
from tasks.retry import IO_RETRIES


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
    create_link_artifact(key="retrain-report", link=report.resolve().as_uri(), link_text="report.html",
                         description="the HTML model comparison (a local file)")
    best = data["models"][data["best_model"]]
    return {"best_model": data["best_model"], "roc_auc": best["roc_auc"], "pauc_80": best["pauc_80"]}
