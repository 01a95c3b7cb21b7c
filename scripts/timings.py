"""Time the README's two commands from a fresh clone and write reports/timings.json.

    python3 scripts/timings.py [--repo .] [--shared ../shared] [--out reports/timings.json]

Clones the repository's committed HEAD into a temporary folder (with the shared data beside it, as
CI has it), then times, one after the other: `make install` (the virtual environment, as a
newcomer's first `make run` builds it), `make run` (the demo's whole `dvc repro`) and `make test`
(whose passed count it reads). It writes the figures with the machine and the date into the
timings file (keeping its `reports` entry, which dates the benchmark reports that carry no date),
then `lesion docs` puts them into README.md and docs/. Run it on an otherwise idle machine: the
figures are wall times. It takes about as long as the three commands (20-25 minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _timed(cmd: list[str], cwd: Path, log: Path) -> tuple[float, str]:
    """Run `cmd` in `cwd` (output to `log` and returned); its wall time in seconds. Exits on failure."""
    start = time.perf_counter()
    run = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "CI": "true"})
    seconds = time.perf_counter() - start
    log.write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {run.returncode}); see {log}")
    return seconds, run.stdout + run.stderr


def _machine() -> str:
    gpu = shutil.which("nvidia-smi")
    name = "no GPU"
    if gpu:
        out = subprocess.run([gpu, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        name = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {name}"


def measure(repo: Path, shared: Path, logs: Path) -> dict:
    """Install, run and test in a fresh clone of `repo`; the timings file's make_run and make_test."""
    with tempfile.TemporaryDirectory(prefix="lesion-timings-") as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
        if shared.is_dir():
            (Path(tmp) / "shared").symlink_to(shared.resolve(), target_is_directory=True)
        install, _ = _timed(["make", "install"], clone, logs / "install.log")
        run, _ = _timed(["make", "run"], clone, logs / "run.log")
        test, out = _timed(["make", "test"], clone, logs / "test.log")
    passed = re.findall(r"(\d+) passed", out)
    if not passed:
        sys.exit(f"no passed count in the output of make test; see {logs / 'test.log'}")
    return {"make_run": {"seconds": round(install + run), "install_seconds": round(install),
                         "scope": f"a fresh clone: installing `.venv` ({round(install)} s), then the demo's whole "
                                  "`dvc repro` (every stage trained)"},
            "make_test": {"seconds": round(test), "passed": int(passed[-1]),
                          "scope": "right after, in the same clone: two pytest-xdist workers"}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=".", help="the repository whose HEAD is cloned (default .)")
    parser.add_argument("--shared", default="../shared", help="the shared data folder put beside the clone")
    parser.add_argument("--out", default="reports/timings.json", help="the timings file (default reports/timings.json)")
    args = parser.parse_args()
    out = Path(args.out)
    logs = Path(tempfile.mkdtemp(prefix="lesion-timings-logs-"))
    figures = measure(Path(args.repo).resolve(), Path(args.shared), logs)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    result = {"about": "Written by scripts/timings.py (a fresh clone's make install + make run, then make test); "
                       "`lesion docs` puts the figures into README.md and docs/. `reports` names the machine and "
                       "date of the committed benchmark reports that do not record them.",
              "date": dt.date.today().isoformat(), "machine": _machine(), **figures,
              "reports": previous.get("reports", {})}
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}: make run {figures['make_run']['seconds']} s (install included), make test "
          f"{figures['make_test']['seconds']} s, {figures['make_test']['passed']} passed; logs in {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
