"""Task of the stages whose outputs persist between runs: keep only what the current params write."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from lesion_ml.io import remove_stale

log = logging.getLogger("lesion_ml.outputs")


@task(cache_policy=NONE)
def keep_only(folder: Path, names: Iterable[str]) -> list[str]:
    """Delete the files of `folder` not in `names` (folds or seeds that no longer exist)."""
    gone = remove_stale(folder, names)
    if gone:
        log.info("%s: removed %d file(s) the current params no longer write: %s", folder, len(gone),
                 ", ".join(gone[:10]) + (" ..." if len(gone) > 10 else ""))
    return gone
