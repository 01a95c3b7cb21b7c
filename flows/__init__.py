"""Prefect flows: one module per DVC stage (`python -m flows.<stage>`)."""
import os

# Quiet, offline runs; lesion_ml's log records go to the Prefect run logs.
for _key, _value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "lesion_ml",
}.items():
    os.environ.setdefault(_key, _value)
