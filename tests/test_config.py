from __future__ import annotations

import pytest

from conftest import REPO
from lesion_ml.config import ConfigError, Params, load_params, validate_params


def test_repository_params_validate():
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "synthetic"
    assert params.prepare.select.k == 20
    assert "resnet18" in params.train_cnn.models


def test_empty_file_gives_defaults(tmp_path):
    (tmp_path / "p.yaml").write_text("")
    assert load_params(tmp_path / "p.yaml") == Params()


def test_unknown_key_is_named_with_its_path():
    with pytest.raises(ConfigError, match=r"train_cnn\.models\.resnet18\.epoch: unknown key"):
        validate_params({"train_cnn": {"models": {"resnet18": {"epoch": 3}}}})


def test_ill_typed_value_names_key_value_and_rule():
    with pytest.raises(ConfigError) as err:
        validate_params({"train_cnn": {"models": {"r": {"lr": -0.1}}}, "data": {"source": "kaggle"}})
    msg = str(err.value)
    assert "train_cnn.models.r.lr: Input should be greater than 0 (found -0.1)" in msg
    assert "data.source" in msg and "'synthetic', 'isic2024' or 'folder'" in msg and "'kaggle'" in msg


def test_bad_yaml_and_missing_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="no such file"):
        load_params(tmp_path / "absent.yaml")


def test_synthetic_ranges_are_checked():
    with pytest.raises(ConfigError, match="lesions_per_patient"):
        validate_params({"data": {"synthetic": {"lesions_per_patient": [5, 2]}}})
