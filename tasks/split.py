"""Task of the split stage: patient-grouped folds."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lesion_ml.config import SplitConfig
from lesion_ml.data.split import assign_folds, fold_sizes
from lesion_ml.io import write_parquet
from tasks.cache import cached_task


@cached_task(outputs=('out',))
def make_folds(*, lesions: Path, cfg: SplitConfig, out: Path) -> dict:
    """Patient-grouped stratified folds for every row."""
    folds = assign_folds(pd.read_parquet(lesions), cfg)
    write_parquet(folds, out)
    return fold_sizes(folds)
