"""The task cache's code keys: which library modules a task's key covers."""
from __future__ import annotations

from lesion_ml.fingerprint import module_closure


def _module_closure(start: set[str]) -> set[str]:
    return module_closure(start, ("lesion_ml", "tasks"))


def test_code_keys_follow_imports_made_inside_functions():
    """lesion_ml/model/validate.py imports predict, the model runner and the report helpers inside its
    functions: editing them must change the validate task's key, as editing a module-level
    import does; the training code, which validation never runs, is not part of it."""
    closure = _module_closure({"lesion_ml.model.validate"})
    assert {"lesion_ml.model.predict", "lesion_ml.image.inference", "lesion_ml.image.loaders",
            "lesion_ml.evaluate.report", "lesion_ml.model.bundle"} <= closure
    assert "lesion_ml.image.train" not in closure


def test_code_keys_do_not_spread_to_unrelated_modules():
    """The LightGBM module reaches config, io, the exception types, the sampling rule and the artefact
    catalogue only; ingest's
    modules never reach it."""
    closure = _module_closure({"lesion_ml.tabular.gbdt"})
    config = {m for m in closure if m.startswith("lesion_ml.config.")}  # the modules of the config package
    assert "lesion_ml.config.data" in config  # TrainGbdtConfig's: editing it changes the LightGBM tasks' keys
    # the artefact catalogue through config (data.path's default is its raw-data folder)
    assert closure - config == {"lesion_ml.tabular.gbdt", "lesion_ml.config", "lesion_ml.io", "lesion_ml.errors",
                                "lesion_ml.sampling", "lesion_ml.artefacts"}
    ingest = _module_closure({"lesion_ml.data.sources", "lesion_ml.data.split", "lesion_ml.tabular.prepare"})
    assert "lesion_ml.tabular.gbdt" not in ingest and "lesion_ml.image.train" not in ingest
    assert "lesion_ml.data.schema" in ingest  # imported by sources


def test_checkpoint_keys_reuse_the_task_caches_file_hashes(tmp_path, monkeypatch):
    """One fingerprint, one memo: an HDF5 file the task cache hashed for a task's key (through the
    images manifest) is not read again for the training checkpoint's key, and both see its contents."""
    import hashlib
    import json
    import types

    import lesion_ml.io as io_mod
    from lesion_ml.image.train import _store_fingerprint
    from tasks import cache

    assert cache.HASHES is io_mod.FILE_HASHES
    monkeypatch.setattr(io_mod.FileHashes, "settle_ns", 0)  # memoise fresh files at once
    h5 = tmp_path / "images.hdf5"
    h5.write_bytes(b"\x00" * 4096)
    manifest = tmp_path / "images.json"
    manifest.write_text(json.dumps({"hdf5": str(h5), "root": None, "files": {}}))
    cache._digest(manifest, "images")
    reads = []
    real_open = open
    monkeypatch.setattr(io_mod, "open", lambda p, *a, **k: reads.append(p) or real_open(p, *a, **k), raising=False)
    store = types.SimpleNamespace(hdf5=h5, root=None, files={})
    assert _store_fingerprint(store) == io_mod.image_store_digest(h5, None, {}) and reads == []
    assert io_mod.path_digest(h5) == "file:" + hashlib.sha256(b"\x00" * 4096).hexdigest()
