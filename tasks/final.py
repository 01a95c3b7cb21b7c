"""Task of the final stage: retrain the chosen model on every labelled row and export the bundle."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from lesion_ml.config import Params
from lesion_ml.model.build import build_bundle
from lesion_ml.model.bundle import write_bundle
from tasks.cache import cached_task

log = logging.getLogger("lesion_ml.model.card")


@cached_task(outputs=('out', 'checkpoints'))
def export_final(p: Params, metrics_file: Path, detail_file: Path, scores_file: Path, lesions: Path, clean: Path,
                 images: Path, minority: Path, out: Path, checkpoints: Path) -> dict:
    """Retrain the model that params.yaml final.model names on all rows; write the bundle `out`."""
    bundle = build_bundle(p, json.loads(metrics_file.read_text()), json.loads(detail_file.read_text()),
                          pd.read_parquet(scores_file).set_index("image_id"), pd.read_parquet(lesions),
                          pd.read_parquet(clean), json.loads(images.read_text()), minority, checkpoints)
    write_bundle(out, bundle.manifest, bundle.files, bundle.card)
    m = bundle.manifest
    log.info("final model %s written to %s", m["model"], out)
    return {"model": m["model"], "components": m["components"], "threshold": m["threshold"]}
