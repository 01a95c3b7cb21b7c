"""A run of flows/pipeline.py with nothing to do, against a Prefect server whose task-run recorder
writes every event at once (Prefect's default, batch size 1) and one that batches them (batch size
100, lesion_ml/app/server.py PREFECT_DEFAULTS), side by side; prints the figures.

    .venv/bin/python scripts/bench_recorder.py [--runs 3] [--rounds 2]

Run it in a built project (after `make run`, so that every task finds its cached result). Each
measurement is a process of its own with a fresh PREFECT_HOME: it starts Prefect's temporary
server (as a flow run without a server does), runs the pipeline once to warm up, then `--runs`
times, timed. The two settings alternate, `--rounds` times each. It also counts the retries: the
503 responses ("database is locked") that made a client wait before trying again.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
import prefect.client.base as base
from flows.pipeline import pipeline_flow

retries = []
debug = base.logger.debug
def count(msg, *args, **kwargs):
    if "retryable status code 503" in str(msg):
        retries.append(msg)
    return debug(msg, *args, **kwargs)
base.logger.debug = count
from contextlib import nullcontext
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
quiet = temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
with quiet if sys.argv[2] == "off" else nullcontext():
    pipeline_flow()
    times = []
    for _ in range(int(sys.argv[1])):
        start = time.perf_counter()
        pipeline_flow()
        times.append(time.perf_counter() - start)
print("RESULT " + json.dumps({"seconds": times, "retries_503": len(retries)}))
"""
KEY = "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"


def measure(batch: str, runs: int, heartbeats: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="lesion-bench-prefect-") as home:
        env = dict(os.environ, PREFECT_HOME=home, PYTHONPATH=os.getcwd(), **{KEY: batch})
        env.pop("PREFECT_API_URL", None)
        out = subprocess.run([sys.executable, "-c", CHILD, str(runs), heartbeats], env=env, capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode or line is None:
        sys.exit(f"the pipeline run failed (batch size {batch}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed pipeline runs per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per setting, alternating")
    parser.add_argument("--heartbeats", choices=("on", "off"), default="on",
                        help="flow-run heartbeats (Prefect's default: on; the tests' in-process flows: off)")
    args = parser.parse_args()
    found: dict[str, list[dict]] = {"1": [], "100": []}
    for _ in range(args.rounds):
        for batch in found:
            found[batch].append(measure(batch, args.runs, args.heartbeats))
    print(f"{'recorder batch size':<22}{'median s / run':>16}{'runs':>6}{'503 retries':>13}")
    medians = {}
    for batch, results in found.items():
        seconds = [s for r in results for s in r["seconds"]]
        medians[batch] = statistics.median(seconds)
        warm = sum(r["retries_503"] for r in results)
        print(f"{batch:<22}{medians[batch]:>16.1f}{len(seconds):>6}{warm:>13}")
    print(f"ratio (1 / 100): {medians['1'] / medians['100']:.1f}x")


if __name__ == "__main__":
    main()
