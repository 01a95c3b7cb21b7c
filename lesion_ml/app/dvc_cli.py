"""The dvc command line, run as a subprocess (DVC is never imported): the executable beside this
Python's, whether the project names a remote, and a command whose output goes to the log."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("lesion_ml.retrain")  # the retraining flow's log, as before this moved here


def dvc_executable() -> str:
    """The dvc of this Python's environment (a virtualenv's bin/), else the one on PATH."""
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else "dvc"


def has_remote(repo: Path = Path(".")) -> bool:
    """True when the DVC project names at least one remote."""
    run = subprocess.run([dvc_executable(), "remote", "list"], cwd=repo, capture_output=True, text=True, check=False)
    return bool(run.stdout.strip())


def run_dvc(args: list[str], repo: Path = Path(".")) -> str:
    """Run `dvc <args>` in `repo` (no analytics; this Python's bin/ first on PATH); the last 40 lines of
    its output go to the log. Returns its stdout; raises RuntimeError with the output's end on failure."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    log.info("dvc %s", " ".join(args))
    run = subprocess.run([dvc_executable(), *args], cwd=repo, env=env, capture_output=True, text=True, check=False)
    for line in (run.stdout + run.stderr).splitlines()[-40:]:
        log.info("  %s", line)
    if run.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed (exit {run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}")
    return run.stdout
