from __future__ import annotations

import json

import numpy as np
import pytest

from lesion_ml.io import atomic_path, write_json


def test_write_json_turns_nan_into_null_and_numpy_into_numbers(tmp_path):
    out = write_json({"auc": float("nan"), "n": np.int64(3), "x": [np.float32(0.5), float("inf")]}, tmp_path / "m.json")
    assert json.loads(out.read_text()) == {"auc": None, "n": 3, "x": [0.5, None]}


def test_atomic_path_leaves_nothing_behind_on_error(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
