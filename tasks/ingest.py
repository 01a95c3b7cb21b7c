"""Tasks of the ingest stage: the demo data set, and any source read into the canonical table."""
from __future__ import annotations

from pathlib import Path

from lesion_ml.config import DataConfig, SyntheticConfig
from lesion_ml.data.sources import ingest
from lesion_ml.data.synthetic import generate_synthetic
from lesion_ml.io import write_json, write_parquet
from tasks.cache import cached_task


@cached_task(outputs=('out',))
def generate_demo(*, cfg: SyntheticConfig, out: Path) -> Path:
    """Write the demo data set (ISIC 2024 format) into `out`."""
    generate_synthetic(out, cfg)
    return out


@cached_task(outputs=('lesions', 'images', 'report'))
def ingest_source(*, cfg: DataConfig, synthetic_dir: Path, lesions: Path, images: Path, report: Path) -> dict:
    """Read the source into the canonical lesion table and an image-store manifest."""
    ing = ingest(cfg, synthetic_dir)
    write_parquet(ing.table, lesions)
    write_json(ing.store.to_manifest(), images)
    write_json(ing.report, report)
    return {k: v for k, v in ing.report.items() if k != "skipped"}
