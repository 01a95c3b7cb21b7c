"""The task cache's code keys: which library modules a task's key covers."""
from __future__ import annotations

from tasks.cache import _module_closure


def test_code_keys_follow_imports_made_inside_functions():
    """lesion_ml/validate.py imports predict, the model runner and the report helpers inside its
    functions: editing them must change the validate task's key, as editing a module-level
    import does; the training code, which validation never runs, is not part of it."""
    closure = _module_closure({"lesion_ml.validate"})
    assert {"lesion_ml.predict", "lesion_ml.inference", "lesion_ml.loaders", "lesion_ml.evaluate.report",
            "lesion_ml.bundle"} <= closure
    assert "lesion_ml.train" not in closure


def test_code_keys_do_not_spread_to_unrelated_modules():
    """The LightGBM module reaches config, io and the exception types only; ingest's modules never reach it."""
    assert _module_closure({"lesion_ml.models.gbdt"}) == {"lesion_ml.models.gbdt", "lesion_ml.config", "lesion_ml.io",
                                                         "lesion_ml.errors"}
    ingest = _module_closure({"lesion_ml.data.sources", "lesion_ml.split", "lesion_ml.tabular.prepare"})
    assert "lesion_ml.models.gbdt" not in ingest and "lesion_ml.train" not in ingest
    assert "lesion_ml.data.schema" in ingest  # imported by sources
