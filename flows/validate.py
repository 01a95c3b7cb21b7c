"""Stage `validate@<name>`: models/final on the external set params.yaml external.sets.<name>."""
from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from flows import paths
from lesion_ml.config import load_params
from lesion_ml.errors import ConfigError
from tasks.validate import validate_set


@flow(name="validate")
def validate_flow(name: str, params: str = str(paths.PARAMS)) -> dict:
    """Score the external set `name`: reports/external/<name>/ (report.html, validation.json,
    predictions.csv) and reports/external/<name>.json (the DVC metrics)."""
    p = load_params(params)
    if name not in p.external.sets:
        raise ConfigError(f"no external set {name!r} in params.yaml external.sets; have {sorted(p.external.sets)}")
    ext = p.external.sets[name]
    return validate_set(p.external, ext, paths.FINAL, Path(ext.images), Path(ext.labels),
                        Path(ext.metadata) if ext.metadata else None, paths.EXTERNAL / name,
                        paths.EXTERNAL / f"{name}.json")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m flows.validate <name from params.yaml external.sets>")
    validate_flow(sys.argv[1])
