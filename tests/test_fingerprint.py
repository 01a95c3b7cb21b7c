"""One rule for "what changed" (lesion_ml.fingerprint): the task cache and the training
checkpoints are keyed by the sources of every module the code imports and by the locked and
installed dependency versions."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lesion_ml import fingerprint
from lesion_ml.config import CnnModelConfig
from lesion_ml.fingerprint import ENVIRONMENT, code_fingerprint, module_closure
from lesion_ml.image.train import FoldData, train_fold
from tests.conftest import REPO


@pytest.fixture
def fresh_fingerprints(monkeypatch):
    """Memoised fingerprints are forgotten before and after the test (which edits what they read)."""
    def clear():
        code_fingerprint.cache_clear()
        fingerprint.environment_digest.cache_clear()

    clear()
    monkeypatch.setattr(ENVIRONMENT, "lock", ENVIRONMENT.lock)
    yield
    monkeypatch.undo()
    clear()


def _edited(module_file: str, monkeypatch) -> None:
    """Make the fingerprint read `module_file` (a path under lesion_ml/) with one more line, as if
    it had been edited (the real file is left alone: other tests import it)."""
    real = fingerprint._read_source
    target = (REPO / module_file).resolve()
    monkeypatch.setattr(fingerprint, "_read_source",
                        lambda p: real(p) + (b"\n# edited\n" if Path(p).resolve() == target else b""))
    code_fingerprint.cache_clear()


def test_training_code_covers_what_training_imports_outside_lesion_ml_image():
    closure = module_closure({"lesion_ml.image.train"})
    assert {"lesion_ml.sampling", "lesion_ml.data.images", "lesion_ml.evaluate.metrics", "lesion_ml.image.data",
            "lesion_ml.image.balance", "lesion_ml.io"} <= closure
    assert "lesion_ml.model.predict" not in closure and "lesion_ml.tabular.gbdt" not in closure


@pytest.mark.slow
@pytest.mark.parametrize("edited", ["lesion_ml/sampling.py", "lesion_ml/evaluate/metrics.py",
                                    "lesion_ml/data/images.py"])
def test_a_finished_fold_retrains_after_an_edit_outside_lesion_ml_image(edited, tiny_demo, tmp_path, monkeypatch,
                                                                          fresh_fingerprints):
    from tests.test_train import _tiny

    store, ids, y, _ = _tiny(tiny_demo)
    cfg = CnnModelConfig(image_size=16, epochs=1, batch_size=16)
    data, ckpt = FoldData(ids[:30], y[:30], ids[30:]), tmp_path / "fold0.pt"
    assert train_fold(store, data, cfg, torch.device("cpu"), checkpoint=ckpt).resumed_from == 0
    assert train_fold(store, data, cfg, torch.device("cpu"), checkpoint=ckpt).resumed_from == 1  # nothing changed
    _edited(edited, monkeypatch)
    assert train_fold(store, data, cfg, torch.device("cpu"), checkpoint=ckpt).resumed_from == 0  # retrained
    assert train_fold(store, data, cfg, torch.device("cpu"), checkpoint=ckpt).resumed_from == 1


@pytest.mark.slow
def test_a_finished_fold_retrains_when_the_lock_file_changes(tiny_demo, tmp_path, fresh_fingerprints):
    from tests.test_train import _tiny

    store, ids, y, _ = _tiny(tiny_demo)
    cfg = CnnModelConfig(image_size=16, epochs=1, batch_size=16)
    data, ckpt = FoldData(ids[:30], y[:30], ids[30:]), tmp_path / "fold0.pt"
    lock = tmp_path / "requirements.lock"
    lock.write_text("lightgbm==4.6.0\ntorch==2.14.1\n")
    ENVIRONMENT.use_lock_file(lock)
    assert train_fold(store, data, cfg, torch.device("cpu"), checkpoint=ckpt).resumed_from == 0
    assert train_fold(store, data, cfg, torch.device("cpu"), checkpoint=ckpt).resumed_from == 1
    lock.write_text("lightgbm==4.7.0\ntorch==2.14.1\n")  # an upgrade
    fingerprint.environment_digest.cache_clear()
    code_fingerprint.cache_clear()
    assert train_fold(store, data, cfg, torch.device("cpu"), checkpoint=ckpt).resumed_from == 0


def test_task_keys_change_with_the_lock_file_and_library_code_the_task_reaches(tmp_path, monkeypatch,
                                                                               fresh_fingerprints):
    from tasks import cache
    from tasks.train_gbdt import train_gbdt_fold

    fn = train_gbdt_fold.fn.__wrapped__
    args = {"features": tmp_path / "f.parquet", "folds": tmp_path / "folds.parquet", "cfg": None, "fold": 0,
            "out_boosters": [tmp_path / "b.txt"], "out_importance": tmp_path / "i.json", "out_pred": tmp_path / "p.pq"}

    def key() -> str:
        cache.code_digest.cache_clear()
        return cache.task_key(fn, args, outputs=("out_boosters", "out_importance", "out_pred"),
                              code=cache.code_digest(fn))

    lock = tmp_path / "requirements.lock"
    lock.write_text("lightgbm==4.6.0\n")
    ENVIRONMENT.use_lock_file(lock)
    first = key()
    assert key() == first
    lock.write_text("lightgbm==4.7.0\n")
    fingerprint.environment_digest.cache_clear()
    code_fingerprint.cache_clear()
    second = key()
    assert second != first
    _edited("lesion_ml/sampling.py", monkeypatch)  # LightGBM's downsampling rule
    assert key() != second


def test_the_task_cache_and_the_checkpoints_share_one_fingerprint_function():
    """No second scheme: the task cache builds its code key with lesion_ml.fingerprint, the
    checkpoints likewise, and no module hashes a folder of sources on its own."""
    sources = {p: p.read_text() for p in [*REPO.joinpath("lesion_ml").rglob("*.py"), *REPO.joinpath("tasks").glob("*.py")]}
    assert "code_fingerprint(" in sources[REPO / "tasks/cache.py"]
    assert "code_fingerprint(" in sources[REPO / "lesion_ml/image/train.py"]
    assert [p for p, s in sources.items() if "Path(__file__).parent" in s and "rglob" in s] == []
    assert sorted(str(p.relative_to(REPO)) for p, s in sources.items() if "def code_fingerprint" in s) == [
        "lesion_ml/fingerprint.py"]


def test_every_stage_depends_on_the_lock_file():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        deps = stage.get("deps") or stage["do"]["deps"]
        assert "requirements.lock" in deps, name


def test_the_environment_is_the_locked_distributions_installed_versions(tmp_path, monkeypatch, fresh_fingerprints):
    """An upgrade of a locked library changes the fingerprint; a tool installed beside the pipeline
    (not in the lock file) does not; without a lock file every installed distribution counts."""
    lock = tmp_path / "requirements.lock"
    lock.write_text("# pinned\nnumpy==2.3.0\nscikit_learn==1.9.1\n")
    ENVIRONMENT.use_lock_file(lock)
    assert fingerprint.locked_names(lock.read_text()) == {"numpy", "scikit-learn"}
    installed = {"numpy": "2.3.0", "scikit-learn": "1.9.1", "jupyter": "1.0"}
    monkeypatch.setattr(fingerprint, "_distributions", lambda: dict(installed))

    def digest() -> str:
        fingerprint.environment_digest.cache_clear()
        return fingerprint.environment_digest()

    first = digest()
    installed["jupyter"] = "2.0"
    installed["ruff"] = "0.9"
    assert digest() == first  # tools outside the lock
    installed["scikit-learn"] = "1.9.2"
    assert digest() != first  # an installed upgrade of a locked library, lock file unchanged
    ENVIRONMENT.use_lock_file(None)
    unlocked = digest()
    installed["ruff"] = "1.0"
    assert digest() != unlocked


def test_a_runtime_argument_is_not_part_of_the_task_key(tmp_path):
    """How often a fold writes its checkpoint changes how it runs, not what it writes: a changed
    train_cnn.checkpoint_every_s reuses the cached folds, while a changed thread count does not."""
    from tasks import cache
    from tasks.train_cnn import train_cnn_fold

    fn = train_cnn_fold.fn.__wrapped__
    code = cache.code_digest(fn)
    args = {"images": tmp_path / "images.json", "folds": tmp_path / "folds.parquet", "cfg": CnnModelConfig(),
            "device": "cpu", "num_workers": 0, "fold": 0, "out_weights": tmp_path / "w", "out_history": tmp_path / "h",
            "out_pred": tmp_path / "p", "threads": 1, "checkpoint_every_s": 60.0}
    outputs = train_cnn_fold.cache_policy.outputs

    def key(**changed) -> str:
        return cache.task_key(fn, {**args, **changed}, outputs=outputs, code=code, runtime=("checkpoint_every_s",))

    assert key(checkpoint_every_s=0.0) == key()
    assert key(threads=2) != key()
    assert train_cnn_fold.cache_policy.runtime == ("checkpoint_every_s",)
