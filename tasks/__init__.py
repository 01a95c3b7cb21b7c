"""The stages' Prefect tasks: read inputs, call one lesion_ml function, write outputs."""
import os

# Quiet, offline runs; lesion_ml's log records go to the Prefect run logs.
for _key, _value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "lesion_ml",
    # lesion_ml also logs outside flow runs (tests, the CLI): no warning for those records
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}.items():
    os.environ.setdefault(_key, _value)

import logging  # noqa: E402

# Prefect attaches its handlers to the extra loggers but leaves their level at the root's WARNING.
logging.getLogger("lesion_ml").setLevel(logging.INFO)
