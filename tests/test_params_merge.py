"""`lesion params --merge`: example override files merged into params.yaml."""
from __future__ import annotations

import pytest
import yaml

from lesion_ml.app.cli import main
from lesion_ml.config import ConfigError, apply_override, load_params, merge_params
from tests.conftest import REPO


def test_sections_merge_key_by_key_and_named_collections_are_replaced():
    base = {"data": {"source": "synthetic", "path": "x", "folder": {"csv": "a.csv", "images": "im"}},
            "train_cnn": {"device": "auto", "models": {"resnet18": {"epochs": 4}, "fusion": {"epochs": 2}}},
            "validate": {"sets": {"old": {"images": "i", "labels": "l"}}, "tta": False}}
    over = {"data": {"source": "folder", "folder": {"csv": "b.csv"}}, "train_cnn": {"models": {"lite0": {"epochs": 8}}},
            "validate": {"sets": {"new": {"images": "j", "labels": "m"}}}}
    got = merge_params(base, over)
    assert got["data"] == {"source": "folder", "path": "x", "folder": {"csv": "b.csv", "images": "im"}}
    assert got["train_cnn"] == {"device": "auto", "models": {"lite0": {"epochs": 8}}}
    assert got["validate"] == {"sets": {"new": {"images": "j", "labels": "m"}}, "tta": False}
    assert base["train_cnn"]["models"] == {"resnet18": {"epochs": 4}, "fusion": {"epochs": 2}}  # not mutated


def test_the_shipped_example_merges_into_valid_params(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    assert main(["params", "--merge", str(REPO / "examples/ham10000-400.yaml"), "--params", str(params)]) == 0
    p = load_params(params)
    example = yaml.safe_load((REPO / "examples/ham10000-400.yaml").read_text())
    assert list(p.train_cnn.models) == list(example["train_cnn"]["models"])
    assert p.data.source == "folder" and p.final.fallback in p.train_cnn.models
    assert not p.train_cnn.models[p.final.fallback].fusion.enabled  # image-only: scores images without metadata
    shipped = load_params(REPO / "params.yaml")
    assert p.split.n_folds == example["split"]["n_folds"] != shipped.split.n_folds  # merged key by key:
    assert p.split.seed == shipped.split.seed and p.evaluate == shipped.evaluate  # what it does not name stays
    assert "merged" in capsys.readouterr().out


def test_a_bad_override_names_the_file_and_leaves_params_alone(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    before = params.read_bytes()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train_cnn:\n  models:\n    x: {backbone: resnet18, epochz: 3}\n")
    with pytest.raises(ConfigError, match=r"(?s)merged with .*bad.yaml.*train_cnn.models.x.epochz: unknown key"):
        apply_override(bad, params)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        apply_override(bad, params)
    assert params.read_bytes() == before


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_every_example_merges_into_valid_params(tmp_path, example):
    """Each file of examples/ merges into the shipped params.yaml and validates: what it names is
    what the pipeline then runs."""
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    apply_override(REPO / "examples" / example, params)
    p = load_params(params)
    named = yaml.safe_load((REPO / "examples" / example).read_text())
    if "train_cnn" in named:
        assert list(p.train_cnn.models) == list(named["train_cnn"]["models"])
    if "split" in named:
        assert p.split.n_folds == named["split"]["n_folds"]
    if "validate" in named:
        assert list(p.validate.sets) == list(named["validate"]["sets"])
