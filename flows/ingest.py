"""Stage `ingest`: the configured source (or the generated demo set) -> canonical lesion table."""
from __future__ import annotations

from prefect import flow

from lesion_ml import artefacts as cat
from lesion_ml.config import load_params
from tasks.ingest import generate_demo, ingest_source


@flow(name="ingest")
def ingest_flow(params: str = str(cat.PARAMS)) -> dict:
    """Generate the demo set when data.source is synthetic, then ingest and validate."""
    cfg = load_params(params).data
    if cfg.source == "synthetic":
        generate_demo(cfg=cfg.synthetic, out=cat.DEMO_DIR)
    return ingest_source(cfg=cfg, synthetic_dir=cat.DEMO_DIR, lesions=cat.LESIONS, images=cat.IMAGES,
                         report=cat.INGEST_REPORT)


if __name__ == "__main__":
    ingest_flow()
