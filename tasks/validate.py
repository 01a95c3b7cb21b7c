"""Task of the validate stage: one external set scored by the exported model."""
from __future__ import annotations

from pathlib import Path

from lesion_ml.app.validation import run_validation
from lesion_ml.config import ExternalSetConfig, ValidateConfig
from lesion_ml.io import write_json
from lesion_ml.model.validate import summary
from tasks.cache import cached_task


@cached_task(outputs=("out", "metrics"))
def validate_set(*, cfg: ValidateConfig, ext: ExternalSetConfig, model: Path, images: Path, labels: Path,
                 metadata: Path | None, out: Path, metrics: Path) -> dict:
    """Score `images` against `labels` with the model folder; the report and per-image scores go to
    `out`, the headline figures (a DVC metrics file) to `metrics`."""
    res = run_validation(model, images=[images], labels=labels, out=out, metadata=metadata, fmt=ext.format,
                         ignore_unlabelled=ext.ignore_unlabelled, tta=cfg.tta, n_boot=cfg.bootstrap,
                         device=cfg.device)
    figures = summary(res)
    write_json(figures, metrics)
    return figures
