"""Start and stop a local Prefect server and the retraining deployment, as background processes.

`start` launches `prefect server start` (API and UI on 127.0.0.1:<port>) and then
`python -m flows.retrain serve` pointed at it, each in its own process group with its log and pid
file in `folder` (default: artefacts.SERVER), and waits until the server answers
and the deployment is registered. `stop` sends SIGINT (a served flow shuts down cleanly on SIGINT; SIGTERM would leave
its runs behind), waits, and only then escalates; no process is left.

`run_with_api` runs one command (`make run`: `dvc repro`) with a Prefect API for all the stage
flows it starts: the one in PREFECT_API_URL, the server of `start`, or else one temporary server for
the command's whole duration, instead of one per stage flow (each costs 5-10 s). Their runs are
kept in PREFECT_HOME's database, so the UI of a later `start` shows them.

Only processes and HTTP: Prefect is imported only to start that temporary server, so the CLI stays fast.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import MutableMapping
from pathlib import Path

from lesion_ml.artefacts import SERVER
from lesion_ml.errors import ServerError

PROCESSES = ("retrain", "server")  # stopped in this order
API_FILE = "server.api"  # the running server's API address (written by `start`)


# The environment lesion-ml gives Prefect, in every process that runs flows or starts a Prefect server
# (the stage processes through tasks/__init__.py, `start`, `run_with_api`, the tests), unless the
# user's own environment sets a key: quiet, offline runs; lesion_ml's log records in the Prefect run
# logs. And one setting for Prefect's SQLite server: its task-run recorder writes each task-run
# event in a transaction of its own by default (batch size 1). A flow that creates a run meanwhile
# (every subflow of flows/pipeline.py does) finds the database locked, gets a 503 and retries 2 s
# later (CHANGELOG.md: most of a pipeline run with nothing to do). Batched (100 events, or every
# 5 s: the recorder's flush interval, and at the server's shutdown), such retries are rare, and the
# UI shows each task run at most 5 s later.
PREFECT_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "lesion_ml",
    # lesion_ml also logs outside flow runs (tests, the CLI): no warning for those records
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
}


def prefect_defaults(env: MutableMapping[str, str] = os.environ) -> MutableMapping[str, str]:
    """Each of PREFECT_DEFAULTS that `env` does not set yet; returns `env`."""
    for key, value in PREFECT_DEFAULTS.items():
        env.setdefault(key, value)
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _pid(folder: Path, name: str) -> int | None:
    try:
        pid = int((folder / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _get(url: str, timeout: float = 2.0) -> dict | list | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - a local http URL
            return json.loads(r.read().decode() or "null")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _wait(check, seconds: float, what: str, log: Path) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.5)
    tail = log.read_text()[-2000:] if log.is_file() else ""
    raise ServerError(f"{what} did not happen within {seconds:.0f} s; see {log}:\n{tail}")


def _spawn(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True)
    return proc.pid


def start(repo: Path, folder: Path = SERVER, host: str = "127.0.0.1", port: int = 4200,
          deployment: str = "retrain/demo", timeout: float = 120.0) -> dict[str, str | int]:
    """Start the server and serve the retrain deployment (both run in `repo`), with their logs and
    pid files in `folder`; returns the UI and API addresses and pids.

    Raises:
        ServerError: already running, the port is taken, or a start timed out (with the log's end).
    """
    folder.mkdir(parents=True, exist_ok=True)
    running = {n: p for n in PROCESSES if (p := _pid(folder, n))}
    if running:
        raise ServerError(f"already running ({', '.join(f'{n} pid {p}' for n, p in running.items())}); "
                          "`lesion server stop` first")
    api = f"http://{host}:{port}/api"
    if _get(f"{api}/health") is not None:
        raise ServerError(f"something already answers on {host}:{port}; stop it or pass --port")
    env = prefect_defaults(dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1"))
    env.update(PREFECT_SERVER_API_HOST=host, PREFECT_SERVER_API_PORT=str(port),
               PREFECT_UI_API_URL=api)  # the UI calls this address (its default is port 4200)
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).with_name("prefect"))
    log = folder / "server.log"
    pid = _spawn([prefect, "server", "start", "--host", host, "--port", str(port)], log, env, repo)
    (folder / "server.pid").write_text(str(pid))
    try:
        _wait(lambda: _get(f"{api}/health") is True or not _alive(pid), timeout, "the Prefect server start", log)
        if not _alive(pid):
            raise ServerError(f"the Prefect server exited at start; see {log}:\n{log.read_text()[-2000:]}")
        env["PREFECT_API_URL"] = api
        (folder / API_FILE).write_text(api)
        rlog = folder / "retrain.log"
        rpid = _spawn([sys.executable, "-m", "flows.retrain", "serve"], rlog, env, repo)
        (folder / "retrain.pid").write_text(str(rpid))
        flow, name = deployment.split("/", 1)
        _wait(lambda: not _alive(rpid) or _get(f"{api}/deployments/name/{flow}/{name}") is not None, timeout,
              f"registering deployment {deployment}", rlog)
        if not _alive(rpid):
            raise ServerError(f"`python -m flows.retrain serve` exited; see {rlog}:\n{rlog.read_text()[-2000:]}")
    except BaseException:
        stop(folder)
        raise
    return {"ui": f"http://{host}:{port}", "api": api, "server_pid": pid, "retrain_pid": rpid}


def stop(folder: Path = SERVER, timeout: float = 30.0) -> list[str]:
    """Stop the served deployment (SIGINT), then the server (their pid files in `folder`); escalate
    to SIGKILL only after `timeout`. Returns what was stopped."""
    stopped = []
    for name in PROCESSES:
        pid = _pid(folder, name)
        if pid is not None:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(pid, sig)  # the whole group: the server's workers, the served runs
                except ProcessLookupError:
                    break
                end = time.monotonic() + (timeout if sig != signal.SIGKILL else 5)
                while _alive(pid) and time.monotonic() < end:
                    time.sleep(0.2)
                if not _alive(pid):
                    break
            try:  # children that outlived their leader
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            stopped.append(f"{name} (pid {pid})")
        (folder / f"{name}.pid").unlink(missing_ok=True)
    (folder / API_FILE).unlink(missing_ok=True)
    return stopped


def status(folder: Path = SERVER) -> dict[str, int | None]:
    """The pid of each process of PROCESSES (None when it is not running), from `folder`'s pid files."""
    return {name: _pid(folder, name) for name in PROCESSES}


def running_api(folder: Path = SERVER) -> str | None:
    """The API address of the server `start` runs, when it runs and answers; else None."""
    try:
        api = (folder / API_FILE).read_text().strip()
    except OSError:
        return None
    return api if _pid(folder, "server") and _get(f"{api}/health") is True else None


def run_with_api(command: list[str], folder: Path = SERVER, say=print) -> int:
    """Run `command` with PREFECT_API_URL set, and return its exit status (128 + N when signal N
    ended it).

    The API is the one PREFECT_API_URL already names, else the server of `start` (when it runs),
    else a temporary one (Prefect's own, as a flow without a server starts) that lives until the
    command ends. A Ctrl-C reaches the command too (it is in the same process group); this
    process waits for the command to stop before it stops the server, so that `dvc repro` can
    release its lock.
    """
    if not command:
        raise ServerError("no command to run; e.g. `lesion server run -- dvc repro`")
    env = dict(os.environ)
    api = env.get("PREFECT_API_URL") or running_api(folder)
    if api:
        say(f"Prefect API {api}")
        env["PREFECT_API_URL"] = api
        return _wait_for(command, env)
    os.environ.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")  # before Prefect reads them
    prefect_defaults()  # the temporary server's settings too
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health poll otherwise
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    try:
        env["PREFECT_API_URL"] = server.api_url
        say(f"Prefect API {server.api_url} (a temporary server for this command's stage flows)")
        return _wait_for(command, env)
    finally:
        server.stop()


def _wait_for(command: list[str], env: dict[str, str]) -> int:
    """Run `command` to its end and return its exit status. A SIGTERM to this process is passed on
    to the command (which then ends as it handles it), so the caller's cleanup still runs."""
    try:
        proc = subprocess.Popen(command, env=env)
    except FileNotFoundError:
        raise ServerError(f"{command[0]}: no such command") from None
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        while True:
            try:
                code = proc.wait()
                return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says
            except KeyboardInterrupt:  # the command got the SIGINT too; let it finish cleanly
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
