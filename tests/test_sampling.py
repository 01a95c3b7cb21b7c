"""The one "every positive plus sampled negatives" rule (lesion_ml.sampling) and its three users."""
from __future__ import annotations

import numpy as np
import pytest

from lesion_ml.sampling import negatives_for, positives_plus_negatives


def _labels(n: int, n_pos: int, seed: int = 0) -> np.ndarray:
    y = np.zeros(n, np.int64)
    y[np.random.default_rng(seed).choice(n, n_pos, replace=False)] = 1
    return y


@pytest.mark.parametrize(("n", "n_pos", "n_neg"), [(1000, 3, 60), (1000, 40, 400), (400_000, 393, 7860)])
def test_keeps_every_positive_and_the_requested_negatives_sorted_and_unique(n, n_pos, n_neg):
    y = _labels(n, n_pos)
    seed = 7
    idx = positives_plus_negatives(y, n_neg, seed)
    assert set(np.flatnonzero(y == 1)) <= set(idx.tolist())
    assert len(idx) == n_pos + n_neg and (y[idx] == 0).sum() == n_neg
    assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    assert np.array_equal(idx, positives_plus_negatives(y, n_neg, seed))  # same seed, same draw
    assert not np.array_equal(idx, positives_plus_negatives(y, n_neg, seed + 1))  # another seed, another draw


def test_fewer_negatives_than_asked_takes_them_all_and_none_for_a_count_below_one():
    y = np.r_[np.ones(193), np.zeros(7)]
    assert np.array_equal(positives_plus_negatives(y, 500, 0), np.arange(200))
    assert np.array_equal(positives_plus_negatives(y, 0, 0), np.arange(193))
    assert np.array_equal(positives_plus_negatives(y, -5, 0), np.arange(193))
    assert np.array_equal(positives_plus_negatives(np.ones(4), 3, 0), np.arange(4))  # no negative at all
    assert len(positives_plus_negatives(np.zeros(10), 3, 0)) == 3  # no positive at all


def test_a_generator_is_advanced_the_same_whatever_the_order_asked():
    y = _labels(1000, 40)
    a, b = np.random.default_rng([3, 1]), np.random.default_rng([3, 1])
    unsorted = positives_plus_negatives(y, 100, a, sort=False)
    assert np.array_equal(np.sort(unsorted), positives_plus_negatives(y, 100, b))
    assert np.array_equal(unsorted[:40], np.flatnonzero(y == 1))  # positives first, in row order
    assert a.integers(2**62) == b.integers(2**62)  # the stream continues identically
    assert np.array_equal(positives_plus_negatives(y, 100, 3), positives_plus_negatives(y, 100, np.random.default_rng(3)))


def test_ratio_count_rounds_half_to_even():
    assert [negatives_for(n, 2.5) for n in (0, 1, 3, 40)] == [0, 2, 8, 100]
    assert negatives_for(3, 0.5) == 2 and negatives_for(1, 0.5) == 0 and negatives_for(393, 20) == 7860


def test_the_three_users_draw_through_the_one_rule():
    """GBDT downsampling, feature selection's row subsample and the image sampler's epochs are
    this function with their own counts (draws identical to what each did before it existed)."""
    from lesion_ml.image.balance import EpochSampler
    from lesion_ml.tabular.gbdt import downsample_negatives
    from lesion_ml.tabular.select import subsample_rows

    y = _labels(1000, 40)
    assert np.array_equal(downsample_negatives(y, 3, seed=5), positives_plus_negatives(y, 120, 5))
    assert np.array_equal(downsample_negatives(y, 0.001, seed=5), positives_plus_negatives(y, 1, 5))  # >= 1
    assert np.array_equal(subsample_rows(y, 500, seed=5), positives_plus_negatives(y, 460, 5))
    assert np.array_equal(subsample_rows(y, 2000, seed=5), np.arange(1000))
    sampler = EpochSampler(y.astype(np.float32), "downsample", 2.5, seed=5)
    sampler.set_epoch(2)
    rng = np.random.default_rng([5, 2])
    assert list(sampler) == rng.permutation(positives_plus_negatives(y, 100, rng, sort=False)).tolist()
