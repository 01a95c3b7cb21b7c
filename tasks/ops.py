"""Tasks of the retraining flow: DVC commands and publishing the results."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from tasks.retry import IO_RETRIES

log = logging.getLogger("lesion_ml.retrain")


def _dvc() -> str:
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else "dvc"


def has_remote(repo: Path = Path(".")) -> bool:
    """True when the DVC project names at least one remote."""
    run = subprocess.run([_dvc(), "remote", "list"], cwd=repo, capture_output=True, text=True, check=False)
    return bool(run.stdout.strip())


@task(cache_policy=NONE, **IO_RETRIES)
def dvc(args: list[str], repo: Path = Path(".")) -> str:
    """Run `dvc <args>` in `repo`; its output goes to the run log. Raises with the output's end on failure."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    log.info("dvc %s", " ".join(args))
    run = subprocess.run([_dvc(), *args], cwd=repo, env=env, capture_output=True, text=True, check=False)
    for line in (run.stdout + run.stderr).splitlines()[-40:]:
        log.info("  %s", line)
    if run.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed (exit {run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}")
    return run.stdout


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
