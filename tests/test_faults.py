"""Fault injection: SIGKILL in the middle of a stage, a full disk, transient I/O errors.

A killed stage must never leave a half-written output under its final name, and rerunning it
must give byte-identical outputs to an uninterrupted run. (Training's kill-in-epoch-2 resume
test lives in test_train.py.)
"""
from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, TINY

# Runs the ingest, split and prepare stages' task bodies (no Prefect server) in `workdir`, once per
# line "KILL_AT LOG" on its stdin, each run in a fresh child forked after the imports (a few seconds
# each, paid once): the child writes its output to LOG and, with KILL_AT=n > 0, SIGKILLs itself at the
# n-th atomic rename, i.e. after that output's temporary file is complete but before it replaces the
# target. The server answers each line with the child's return code, as subprocess reports it.
DRIVER = r"""
import os, signal, sys, traceback
sys.path.insert(0, {repo!r})
os.chdir({workdir!r})
from lesion_ml.config import DataConfig, PrepareConfig, SplitConfig, SelectConfig, SyntheticConfig
from lesion_ml.data.sources import count_metadata_columns
from lesion_ml import artefacts as cat
from tasks.ingest import generate_demo, ingest_source
from tasks.prepare import clean_features, prepare_fold, write_selection
from tasks.split import make_folds

def stages(kill_at):
    if kill_at:
        real_replace, calls = os.replace, [0]
        def replace(src, dst):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)
        os.replace = replace
    data = DataConfig(source="synthetic", synthetic=SyntheticConfig(**{tiny!r}))
    generate_demo.fn(cfg=data.synthetic, out=cat.DEMO_DIR)
    ingest_source.fn(cfg=data, synthetic_dir=cat.DEMO_DIR, lesions=cat.LESIONS, images=cat.IMAGES, report=cat.INGEST_REPORT)
    make_folds.fn(lesions=cat.LESIONS, cfg=SplitConfig(n_folds=3, seed=0), out=cat.FOLDS)
    prep = PrepareConfig(select=SelectConfig(k=6))
    n = clean_features.fn(lesions=cat.LESIONS, cfg=prep, out=cat.CLEAN)
    per_fold = [prepare_fold.fn(clean=cat.CLEAN, folds=cat.FOLDS, cfg=prep, fold=k, out=cat.features(k)) for k in range(3)]
    write_selection.fn(per_fold=per_fold, n_columns=count_metadata_columns(cat.LESIONS), n_candidates=n, out=cat.SELECTION)

print("ready", flush=True)
for line in sys.stdin:
    kill_at, log = line.split(maxsplit=1)
    pid = os.fork()
    if pid == 0:
        fd = os.open(log.strip(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)  # the answers alone go to the server's stdout
        os.dup2(fd, 2)
        try:
            stages(int(kill_at))
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        os._exit(0)
    status = os.waitpid(pid, 0)[1]
    print(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status), flush=True)
"""

OUTPUTS = ["data/interim/demo/train-image.hdf5", "data/interim/demo/train-metadata.csv",
           "data/interim/lesions.parquet", "data/interim/images.json", "reports/ingest.json",
           "data/processed/folds.parquet", "data/processed/features/clean.parquet",
           *[f"data/processed/features/fold{k}.parquet" for k in range(3)], "reports/selection.json"]


class _Driver:
    """The DRIVER process of one work folder: `run(kill_at)` gives a forked run's return code and its output."""

    def __init__(self, workdir: Path):
        code = DRIVER.format(repo=str(REPO), workdir=str(workdir), tiny=TINY.model_dump(mode="json"))
        self.workdir, self.runs = workdir, 0
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline()
        assert ready == "ready\n", ready + self.proc.stderr.read()[-3000:]

    def run(self, kill_at: int = 0) -> tuple[int, str]:
        import select

        self.runs += 1
        log = self.workdir.parent / f"{self.workdir.name}-run{self.runs}.log"
        self.proc.stdin.write(f"{kill_at} {log}\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], 600)[0]:  # the limit each run had as its own process
            self.proc.kill()
            pytest.fail(f"a run with KILL_AT={kill_at} gave no answer in 600 s; its output: {log}")
        answer = self.proc.stdout.readline()
        assert answer, self.proc.stderr.read()[-3000:]
        return int(answer), log.read_text()


def _digests(workdir: Path) -> dict[str, str | None]:
    return {rel: hashlib.sha256((workdir / rel).read_bytes()).hexdigest() if (workdir / rel).exists() else None
            for rel in OUTPUTS}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults")
    driver = _Driver(workdir)
    code, err = driver.run()
    assert code == 0, err[-3000:]
    digests = _digests(workdir)
    assert None not in digests.values()
    yield driver, digests
    driver.proc.stdin.close()
    assert driver.proc.wait(timeout=60) == 0


@pytest.mark.slow
@pytest.mark.parametrize("kill_at, stage", [(2, "ingest"), (4, "ingest"), (6, "split"), (8, "prepare"),
                                            (10, "prepare")])
def test_sigkill_mid_stage_leaves_no_partial_output_and_a_rerun_is_identical(clean_run, kill_at, stage):
    driver, expected = clean_run
    workdir = driver.workdir
    for rel in OUTPUTS:  # start from nothing, as DVC does
        (workdir / rel).unlink(missing_ok=True)
    code, err = driver.run(kill_at)
    assert code == -9, err[-2000:]
    after_kill = _digests(workdir)
    # every output under its final name is complete (identical to the clean run's) or absent
    assert all(d is None or d == expected[rel] for rel, d in after_kill.items()), after_kill
    assert sum(d is not None for d in after_kill.values()) < len(OUTPUTS)
    code, err = driver.run()
    assert code == 0, err[-3000:]
    assert _digests(workdir) == expected


def test_full_disk_is_a_clear_error_and_the_previous_output_survives(tmp_path, monkeypatch):
    from lesion_ml.io import DiskFullError, write_parquet

    target = tmp_path / "out.parquet"
    write_parquet(pd.DataFrame({"a": [1, 2]}), target)
    before = target.read_bytes()

    def full(self, path, **kw):
        Path(path).write_bytes(b"PAR1 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    with pytest.raises(DiskFullError, match=r"no space left on the device while writing .*out.parquet "
                                            r"\(.* MiB free in .*\); nothing was written"):
        write_parquet(pd.DataFrame({"a": [3]}), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]  # no temporary file left


def test_only_transient_io_errors_are_retried():
    from lesion_ml.data.sources import DataError
    from lesion_ml.io import is_transient

    assert is_transient(OSError(errno.EIO, "Input/output error"))
    assert is_transient(OSError(errno.ESTALE, "Stale file handle"))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "No such file"))
    assert not is_transient(PermissionError(errno.EACCES, "Permission denied"))
    assert not is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_transient(DataError("bad row"))


@pytest.mark.flow
def test_prefect_retries_a_task_after_a_transient_oserror(prefect_harness, tmp_path, monkeypatch):
    from prefect import flow

    import tasks.split as td
    from lesion_ml.config import SplitConfig
    from lesion_ml.data.sources import DataError

    table = pd.DataFrame({"image_id": [f"i{k}" for k in range(12)], "patient_id": [f"p{k // 2}" for k in range(12)],
                          "target": [k % 2 for k in range(12)]})
    table.to_parquet(tmp_path / "lesions.parquet")
    calls = []
    real = td.assign_folds

    def flaky(t, cfg):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error reading the network share")
        return real(t, cfg)

    monkeypatch.setattr(td, "assign_folds", flaky)
    monkeypatch.setattr(td.make_folds, "retry_delay_seconds", [0, 0])

    monkeypatch.chdir(tmp_path)  # the task cache (.lesion/prefect) lives here

    @flow
    def split_once():  # refresh_cache: the second call must run again, not hit the first call's result
        task = td.make_folds.with_options(refresh_cache=True)
        return task(lesions=tmp_path / "lesions.parquet", cfg=SplitConfig(n_folds=3), out=tmp_path / "folds.parquet")

    split_once()
    assert len(calls) == 2 and pd.read_parquet(tmp_path / "folds.parquet")["fold"].nunique() == 3

    calls.clear()

    def bad(t, cfg):
        calls.append(1)
        raise DataError("2 patients cannot fill 3 patient-grouped folds")

    monkeypatch.setattr(td, "assign_folds", bad)
    with pytest.raises(DataError, match="cannot fill"):
        split_once()
    assert len(calls) == 1  # bad data is not retried


def test_torch_checkpoints_on_a_full_disk_are_a_clear_error_too(tmp_path, monkeypatch):
    import torch

    from lesion_ml.io import DiskFullError, save_torch

    save_torch({"w": torch.ones(2)}, tmp_path / "fold0.pt")

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DiskFullError, match=r"no space left on the device while writing .*fold0.pt"):
        save_torch({"w": torch.zeros(2)}, tmp_path / "fold0.pt")
    monkeypatch.undo()
    assert torch.equal(torch.load(tmp_path / "fold0.pt", weights_only=True)["w"], torch.ones(2))


def test_a_transient_read_error_is_not_mistaken_for_a_bad_image(tmp_path, monkeypatch):
    from lesion_ml.data.images import BadImageError, ImageStore

    (tmp_path / "a.png").write_bytes(b"x")
    store = ImageStore(root=tmp_path, files={"a": "a.png"})

    def flaky(self):
        raise OSError(errno.ESTALE, "Stale file handle")

    monkeypatch.setattr(Path, "read_bytes", flaky)
    with pytest.raises(OSError, match="Stale file handle") as err:
        store.read_bytes("a")
    assert not isinstance(err.value, BadImageError)

    def gone(self):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", gone)
    with pytest.raises(BadImageError, match="a.png: cannot read image 'a': Permission denied"):
        store.read_bytes("a")
