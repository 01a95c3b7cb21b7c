"""The one rule for "every positive plus sampled negatives" (numpy only: no torch, no sklearn).

Used by the LightGBM downsampling (lesion_ml.tabular.gbdt), the row subsample that feature
selection scores on (lesion_ml.tabular.select) and the image models' per-epoch downsampling
(lesion_ml.image.balance.EpochSampler). Each caller says how many negatives it wants; the ratio rule
(`negatives_for`) is here too, so "neg_per_pos negatives per positive" rounds the same way
everywhere.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def negatives_for(n_pos: int, neg_per_pos: float) -> int:
    """Negatives wanted for `n_pos` positives at `neg_per_pos` per positive: the product rounded
    to the nearest integer (Python's round: an exact half goes to the even neighbour)."""
    return int(round(neg_per_pos * n_pos))


def positives_plus_negatives(y: Sequence[float] | np.ndarray, n_neg: int,
                             rng: np.random.Generator | int | Sequence[int], sort: bool = True) -> np.ndarray:
    """Row indices of every positive (`y == 1`) plus `n_neg` negatives drawn without replacement
    (every negative when there are fewer; none when `n_neg` <= 0).

    `rng`: a numpy Generator, which the draw advances (one `choice` call, always made, so a caller
    that draws more from it afterwards sees the same stream whatever `n_neg` is), or a seed for
    `np.random.default_rng`. The result is sorted (`sort=True`); unsorted it is the positives in
    row order followed by the negatives in the order drawn.
    """
    y = np.asarray(y)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y != 1)
    take = rng.choice(neg, size=max(0, min(len(neg), int(n_neg))), replace=False)
    chosen = np.concatenate([pos, take])
    return np.sort(chosen) if sort else chosen
