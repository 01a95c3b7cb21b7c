"""Stage `ingest`: the configured source (or the generated demo set) -> canonical lesion table."""
from __future__ import annotations

from prefect import flow

from flows import paths
from lesion_ml.config import load_params
from tasks.ingest import generate_demo, ingest_source


@flow(name="ingest")
def ingest_flow(params: str = str(paths.PARAMS)) -> dict:
    """Generate the demo set when data.source is synthetic, then ingest and validate."""
    cfg = load_params(params).data
    if cfg.source == "synthetic":
        generate_demo(cfg.synthetic, paths.DEMO_DIR)
    return ingest_source(cfg, paths.DEMO_DIR, paths.LESIONS, paths.IMAGES, paths.REPORTS / "ingest.json")


if __name__ == "__main__":
    ingest_flow()
