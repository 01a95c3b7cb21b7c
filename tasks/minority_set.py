"""Task of the minority_set stage: the augmented copies of the malignant images."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lesion_ml.config import MinoritySetConfig
from lesion_ml.data.images import ImageStore
from lesion_ml.image.balance import write_minority_set
from lesion_ml.io import write_parquet
from tasks.cache import cached_task


@cached_task(outputs=('out_images', 'out_index'))
def build_minority_set(*, images: Path, lesions: Path, cfg: MinoritySetConfig, out_images: Path,
                       out_index: Path) -> int:
    """Write cfg.copies augmented copies of every malignant image to `out_images` and their index
    (copy_id, source_id) to `out_index` (an empty set when 0)."""
    store = ImageStore.from_manifest(json.loads(images.read_text()))
    table = pd.read_parquet(lesions, columns=["image_id", "target"])
    positives = table.loc[table["target"] == 1, "image_id"].tolist() if cfg.copies else []
    index = write_minority_set(store, positives, cfg, images_out=out_images)
    write_parquet(index, out_index)
    return len(index)
