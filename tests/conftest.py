"""Shared fixtures. PREFECT_HOME points at a temporary folder before anything imports prefect, and
every process of the session (stage subprocesses included) gets one BLAS/OpenMP thread: two
pytest-xdist workers share 2 cores, and more threads than cores only spin."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="lesion-ml-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)  # each process's own
for _key, _value in {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                     "DVC_NO_ANALYTICS": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
                     "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}.items():
    os.environ[_key] = _value
from lesion_ml.app.server import prefect_defaults  # noqa: E402

prefect_defaults()  # as a stage process sets them; the session's Prefect server starts with them too

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from lesion_ml.config import SyntheticConfig  # noqa: E402
from lesion_ml.data.synthetic import generate_synthetic  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY = SyntheticConfig(n_patients=12, lesions_per_patient=(3, 5), malignant_fraction=0.25,
                       tile_px=(40, 56), seed=7)


def shared_dataset(name: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real sample data {path} is absent (it lives in ../shared/data beside the repository)")
    return path


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A tiny generated ISIC 2024-format data set (about 48 lesions, 12 patients)."""
    out = tmp_path_factory.mktemp("demo")
    generate_synthetic(out, TINY)
    return out


SESSION_API = "LESION_TEST_PREFECT_API"  # the session server's API URL, for the pytest-xdist workers
SESSION_DB = "LESION_TEST_PREFECT_DB"  # a copy of its database as it started: migrated, no runs yet


def pytest_configure(config) -> None:
    """One temporary Prefect API server for the whole test session, started by the pytest-xdist
    controller (or the only process) before the workers exist: they find its URL in the
    environment they inherit. It starts in a thread while the workers import and collect;
    `prefect_harness` waits for it. One server instead of one per worker: a first start costs
    about 20 s of CPU, 11 of them building the database from Prefect's migrations. A copy of
    that database, taken before any run, starts the servers of the tests that need their own
    (`fresh_prefect_home`)."""
    if hasattr(config, "workerinput") or os.environ.get(SESSION_API) or config.option.collectonly:
        return
    import socket
    import threading

    from prefect.server.api.server import SubprocessASGIServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = SubprocessASGIServer(port=port)
    template = Path(tempfile.mkdtemp(prefix="lesion-ml-prefect-db-")) / "prefect.db"
    os.environ[SESSION_API], os.environ[SESSION_DB] = server.api_url, str(template)

    def start() -> None:
        import sqlite3
        from contextlib import closing

        try:
            server.start(timeout=180)
            partial = template.with_suffix(".partial")
            with closing(sqlite3.connect(Path(os.environ["PREFECT_HOME"]) / "prefect.db")) as src, \
                    closing(sqlite3.connect(partial)) as dst:
                src.backup(dst)
            partial.replace(template)  # the workers wait for this name
        except Exception as exc:  # noqa: BLE001 - reported by every test that needs the server
            template.with_suffix(".error").write_text(f"{type(exc).__name__}: {exc}")

    config._lesion_prefect = (server, threading.Thread(target=start, daemon=True))
    config._lesion_prefect[1].start()


def pytest_unconfigure(config) -> None:
    if hasattr(config, "_lesion_prefect"):
        server, starting = config._lesion_prefect
        starting.join(timeout=180)
        server.stop()
        shutil.rmtree(Path(os.environ.pop(SESSION_DB)).parent, ignore_errors=True)
        os.environ.pop(SESSION_API, None)


def _session_server_started() -> Path:
    """The session server's database copy, once the server answers (waits up to 180 s)."""
    import time

    template = Path(os.environ[SESSION_DB])
    deadline = time.monotonic() + 180
    while not template.exists():
        error = template.with_suffix(".error")
        if error.exists():
            raise RuntimeError(f"the session's Prefect server did not start: {error.read_text()}")
        assert time.monotonic() < deadline, f"the session's Prefect server at {os.environ[SESSION_API]} " \
                                            "did not start in 180 s"
        time.sleep(0.2)
    return template


@pytest.fixture(scope="session")
def prefect_harness():
    """The session's Prefect API server (`pytest_configure`) for the flows run in this process.
    The flows run in the test processes send no heartbeats (Prefect's own test suite turns them
    off too): each flow run would otherwise wait up to a second at its end for the heartbeat
    thread to stop."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    _session_server_started()
    with temporary_settings(updates={PREFECT_API_URL: os.environ[SESSION_API],
                                     PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture
def fresh_prefect_home(tmp_path_factory) -> Path:
    """A PREFECT_HOME of its own, for a test whose commands start their own Prefect server: it
    holds a copy of the session server's database as that server started (migrated, no runs), as
    a user's home holds after a first run; building it from the migrations would cost each such
    test 11 s of CPU."""
    home = tmp_path_factory.mktemp("prefect-home")
    shutil.copyfile(_session_server_started(), home / "prefect.db")
    return home


@pytest.fixture(scope="session")
def prefect_api_url(prefect_harness) -> str:
    """The session server's API URL, for subprocesses (stage flows under `dvc repro`): given as
    PREFECT_API_URL they report there instead of each starting a temporary server (5-10 s per
    stage). The temporary-server path (a stage run with no URL) is tests/flows/test_dvc.py's
    `test_a_stage_finds_a_prefect_api_by_hand_and_under_make_run`."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def write_competition_files(sample: Path, dest: Path) -> int:
    """The real ISIC 2024 sample as the competition ships it: train-image.hdf5 with one scalar
    fixed-length bytes dataset (dtype |S<n>) per isic_id, and train-metadata.csv."""
    import h5py
    import numpy as np

    dest.mkdir(parents=True, exist_ok=True)
    files = sorted((sample / "images").glob("*.jpg"))
    with h5py.File(dest / "train-image.hdf5", "w") as h5:
        for f in files:
            data = f.read_bytes()
            h5.create_dataset(f.stem, data=np.array(data, dtype=f"S{len(data)}"))
    shutil.copy(sample / "sample_metadata.csv", dest / "train-metadata.csv")
    return len(files)


# -- the tiny demo repository, built once ------------------------------------------------------
TINY_PARAMS = {
    "data": {"synthetic": TINY.model_dump(mode="json")},
    "split": {"n_folds": 2, "seed": 0},
    "prepare": {"select": {"k": 8}},
    "train_gbdt": {"n_estimators": 5, "num_leaves": 4, "min_child_samples": 2, "n_jobs": 1},
    "evaluate": {"bootstrap": 50},
    "final": {"model": "stack_gbdt_images", "fallback": "tiny"},
    # the plumbing of stage validate: the demo set itself stands in for an external one
    "validate": {"bootstrap": 20, "sets": {"demo": {"images": "data/interim/demo/train-image.hdf5",
                                                    "labels": "data/interim/demo/train-metadata.csv"}}},
    "train_cnn": {"threads": 1, "minority_set": {"copies": 1, "max_side": 48},
                  "models": {"tiny": {"backbone": "resnet18", "image_size": 32, "epochs": 1, "batch_size": 8,
                                      "balance": {"minority_set": True}},
                             "tiny_fusion": {"backbone": "resnet18", "image_size": 32, "epochs": 2, "batch_size": 8,
                                             "fusion": {"enabled": True}, "monitor_valid": True,
                                             "balance": {"sampler": "downsample", "neg_per_pos": 2}}}},
}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def tiny_params() -> dict:
    """params.yaml with TINY_PARAMS merged in (their model and validate.sets lists replace the shipped ones)."""
    import copy

    import yaml

    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    params["train_cnn"]["models"] = copy.deepcopy(TINY_PARAMS["train_cnn"]["models"])
    params["validate"]["sets"] = copy.deepcopy(TINY_PARAMS["validate"]["sets"])
    return params


def copy_repo(dest: Path, params: dict) -> None:
    """The repository's tracked files (tests aside) with `params`, as a git repo in `dest`."""
    import subprocess

    import yaml

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel.startswith("tests/") or not (REPO / rel).exists():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def dvc(*args: str, cwd, api_url: str | None = None):
    """`dvc` in `cwd`; its stage flows report to the Prefect API at `api_url` (the session's
    server) when given, else each starts a temporary server as a user's run without one does."""
    import subprocess
    import sys

    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "dvc"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory, prefect_api_url) -> Path:
    """The repository with TINY_PARAMS, built once for the whole test session (the pytest-xdist
    workers share it through a lock), and only read. A test that changes a build works on its own
    copy (`copy_build`).

    Built the way a user without DVC does it (flows/pipeline.py, every stage flow in this process,
    which has imported torch & co. already: about 30 s instead of 90 s for ten stage processes),
    then recorded by `dvc commit` (dvc.lock, the DVC cache), so that `dvc repro` finds every stage
    up to date. That the stage processes of `dvc repro` write what this run writes, and key their
    task results the same way, is tests/flows/test_real_sample.py's check on the real sample."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    # under pytest-xdist each worker's base is popen-gw<N> inside the session's folder: its parent is
    # shared by the session's workers (and only by them); without xdist the base is the session's own
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "demo_build"
    with FileLock(str(shared / "demo_build.lock")):
        if not (shared / "demo_build.done").exists():
            from flows.pipeline import pipeline_flow

            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            copy_repo(root, tiny_params())
            here = os.getcwd()
            os.chdir(root)
            try:
                pipeline_flow()
            finally:
                os.chdir(here)
            run = dvc("commit", "--force", cwd=root)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
            (shared / "demo_build.done").write_text(run.stdout)
    return root


def copy_build(build: Path, dest: Path) -> Path:
    """A copy of a built repository (git, DVC cache, task cache and outputs) that a test may change."""
    shutil.copytree(build, dest, symlinks=True, dirs_exist_ok=True)
    return dest


# -- the order in which `make test` hands out files ----------------------------------------------
# pytest-xdist (--dist loadfile --no-loadscope-reorder) gives whole files to the first free worker
# in collection order. The longest files go first, longest first (run times of a 2-core `make
# test`, in seconds), so that no long file starts while the other worker is nearly done; the
# demo build's first user (test_cache, which builds it) leads, so its other users find it built.
LONGEST_FIRST = [
    "tests/flows/test_cache.py",  # 63, the demo build (30) included
    "tests/flows/test_real_sample.py",  # 139, `lesion bench scale`'s whole run included
    "tests/flows/test_dvc.py",  # 104
    "tests/test_train.py",  # 83
    "tests/flows/test_flows.py",  # 44
    "tests/test_small_data.py",  # 47
    "tests/test_faults.py",  # 52
    "tests/test_tune.py",  # 59
    "tests/test_cli.py",  # 46
    "tests/flows/test_dask.py",  # 23
    "tests/test_gpu_check.py",  # 17
    "tests/flows/test_promise_unseen.py",  # 20
    "tests/test_promises.py",  # 13
    "tests/test_validate.py",  # 10
]


def pytest_collection_modifyitems(items) -> None:
    """Listed files first, in the order of LONGEST_FIRST; the others after them, as collected."""
    rank = {f: i for i, f in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
