"""Stage `validate@<name>`: models/final on the external set params.yaml validate.sets.<name>."""
from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from lesion_ml import artefacts
from lesion_ml.config import load_params
from lesion_ml.errors import ConfigError
from tasks.validate import validate_set


@flow(name="validate")
def validate_flow(name: str, params: str = str(artefacts.PARAMS)) -> dict:
    """Score the external set `name`: reports/external/<name>/ (report.html, validation.json,
    predictions.csv) and reports/external/<name>.json (the DVC metrics)."""
    p = load_params(params)
    if name not in p.validate.sets:
        raise ConfigError(f"no external set {name!r} in params.yaml validate.sets; have {sorted(p.validate.sets)}")
    ext = p.validate.sets[name]
    return validate_set(cfg=p.validate, ext=ext, model=artefacts.FINAL, images=Path(ext.images),
                        labels=Path(ext.labels), metadata=Path(ext.metadata) if ext.metadata else None,
                        out=artefacts.external_dir(name), metrics=artefacts.external_metrics(name))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m flows.validate <name from params.yaml validate.sets>")
    validate_flow(sys.argv[1])
