"""Task of the final stage: retrain the chosen model on every labelled row and export the bundle."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from lesion_ml.model.build import FinalSections, build_bundle
from lesion_ml.model.bundle import write_bundle
from tasks.cache import cached_task

log = logging.getLogger("lesion_ml.model.card")


@cached_task(outputs=('out', 'checkpoints'))
def export_final(*, cfg: FinalSections, metrics: Path, detail: Path, scores: Path, lesions: Path, clean: Path,
                 images: Path, minority_index: Path, minority_images: Path, out: Path,
                 checkpoints: dict[str, Path], fold_weights: dict[str, list[Path]] | None = None) -> dict:
    """Retrain the model that params.yaml final.model names on all rows; write the bundle `out`.
    The minority set is read only when an image model uses it; `checkpoints` holds each image
    model's resumable retraining state, by train_cnn.models key."""
    uses_minority = any(c.balance.minority_set for c in cfg.train_cnn.models.values())
    bundle = build_bundle(cfg, metrics=json.loads(metrics.read_text()), detail=json.loads(detail.read_text()),
                          scores=pd.read_parquet(scores).set_index("image_id"), table=pd.read_parquet(lesions),
                          feats=pd.read_parquet(clean), images=json.loads(images.read_text()),
                          minority_index=pd.read_parquet(minority_index) if uses_minority else None,
                          minority_images=minority_images, checkpoints=checkpoints, fold_weights=fold_weights)
    write_bundle(out, manifest=bundle.manifest, files=bundle.files, card=bundle.card)
    m = bundle.manifest
    log.info("final model %s written to %s", m["model"], out)
    return {"model": m["model"], "components": m["components"], "threshold": m["threshold"]}
