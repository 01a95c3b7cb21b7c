"""Tasks of the training stages' outputs: keep only what the current params write (the outputs
persist between runs), and one out-of-fold table from the per-fold predictions."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from lesion_ml.data.fold_outputs import combine_predictions
from lesion_ml.io import remove_stale, write_parquet
from tasks.cache import cached_task

log = logging.getLogger("lesion_ml.outputs")


@task(cache_policy=NONE)
def keep_only(folder: Path, names: Iterable[str]) -> list[str]:
    """Delete the files of `folder` not in `names` (folds or seeds that no longer exist)."""
    gone = remove_stale(folder, names)
    if gone:
        log.info("%s: removed %d file(s) the current params no longer write: %s", folder, len(gone),
                 ", ".join(gone[:10]) + (" ..." if len(gone) > 10 else ""))
    return gone


@cached_task(outputs=('out',))
def combine_oof(pred_files: list[Path], out: Path) -> Path:
    """Concatenate per-fold validation predictions into one out-of-fold table."""
    return write_parquet(combine_predictions([pd.read_parquet(p) for p in pred_files], out), out)
