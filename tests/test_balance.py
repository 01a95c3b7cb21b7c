from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from lesion_ml.config import BalanceConfig, DataConfig, MinoritySetConfig
from lesion_ml.data.images import ImageStore
from lesion_ml.data.sources import ingest
from lesion_ml.image.balance import EpochSampler, FocalLoss, resolve_pos_weight, write_minority_set

LABELS = np.r_[np.ones(20), np.zeros(980)]


def test_downsample_draws_every_positive_and_the_configured_negatives_fresh_each_epoch():
    s = EpochSampler(LABELS, "downsample", neg_per_pos=5, seed=1)
    epochs = []
    for e in range(3):
        s.set_epoch(e)
        idx = np.array(list(s))
        assert len(idx) == len(s) == 20 + 100 and len(set(idx)) == len(idx)
        assert (LABELS[idx] == 1).sum() == 20 and (LABELS[idx] == 0).sum() == 100
        epochs.append(set(idx))
    assert epochs[0] != epochs[1]
    s.set_epoch(1)
    assert set(s) == epochs[1]  # an epoch replays from (seed, epoch)
    assert s.expected_pos_fraction() == pytest.approx(20 / 120)


def test_weighted_sampler_reaches_the_configured_ratio():
    s = EpochSampler(LABELS, "weighted", neg_per_pos=3, seed=0)
    drawn = []
    for e in range(20):
        s.set_epoch(e)
        drawn.append(LABELS[np.array(list(s))])
    fraction = np.concatenate(drawn).mean()
    assert len(s) == len(LABELS) and fraction == pytest.approx(0.25, abs=0.015)


def test_no_sampler_is_a_permutation_per_epoch():
    s = EpochSampler(LABELS, "none", 10.0, seed=0)
    a = list(s)
    s.set_epoch(1)
    assert sorted(a) == list(range(len(LABELS))) and a != list(s)


def test_sampler_without_positives_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no malignant training image in this fold.*"
                                         r"train_cnn\.models\.<name>\.balance\.sampler: none"):
        EpochSampler(np.zeros(10), "downsample", 10.0, seed=0)


def test_focal_loss_is_weighted_bce_at_gamma_zero_and_discounts_easy_examples():
    logits, y = torch.tensor([3.0, -2.0, 0.5, -0.1]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    bce = F.binary_cross_entropy_with_logits(logits, y, pos_weight=torch.tensor(4.0))
    assert FocalLoss(0.0, 4.0)(logits, y) == pytest.approx(float(bce), rel=1e-6)
    easy, hard = torch.tensor([4.0]), torch.tensor([-1.0])
    one = torch.tensor([1.0])
    ratio_focal = FocalLoss(2.0)(easy, one) / FocalLoss(2.0)(hard, one)
    ratio_bce = FocalLoss(0.0)(easy, one) / FocalLoss(0.0)(hard, one)
    assert ratio_focal < ratio_bce / 10


def test_auto_pos_weight_follows_the_sampler():
    assert resolve_pos_weight(BalanceConfig(), LABELS) == pytest.approx(49.0)
    assert resolve_pos_weight(BalanceConfig(sampler="downsample"), LABELS) == 1.0
    assert resolve_pos_weight(BalanceConfig(pos_weight=3.5), LABELS) == 3.5


def test_minority_set_is_reproducible_in_any_order(tiny_demo, tmp_path):
    ing = ingest(DataConfig(source="synthetic"), tiny_demo)
    pos = ing.table.loc[ing.table["target"] == 1, "image_id"].tolist()[:4]
    cfg = MinoritySetConfig(copies=3, max_side=40, seed=3)
    a = write_minority_set(ing.store, pos, cfg, images_out=tmp_path / "a.hdf5")
    b = write_minority_set(ing.store, pos[::-1], cfg, images_out=tmp_path / "b.hdf5")
    assert sorted(b["copy_id"]) == sorted(a["copy_id"])
    assert len(a) == 12 and set(a["source_id"]) == set(pos)
    sa, sb = ImageStore(hdf5=tmp_path / "a.hdf5"), ImageStore(hdf5=tmp_path / "b.hdf5")
    for cid in a["copy_id"]:
        assert sa.read_bytes(cid) == sb.read_bytes(cid)
        assert max(sa.get(cid).shape[:2]) <= 40
    copies = [sa.get(c) for c in a["copy_id"][:3]]  # three copies of one source differ
    assert not np.array_equal(copies[0], copies[1]) and not np.array_equal(copies[1], copies[2])
    assert list(a.columns) == ["copy_id", "source_id"]
