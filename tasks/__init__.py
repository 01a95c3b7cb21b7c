"""The stages' Prefect tasks: read inputs, call one lesion_ml function, write outputs."""
from lesion_ml.app.server import prefect_defaults

prefect_defaults()  # quiet, offline runs; lesion_ml's log records in the Prefect run logs; see there

import logging  # noqa: E402

# Prefect attaches its handlers to the extra loggers but leaves their level at the root's WARNING.
logging.getLogger("lesion_ml").setLevel(logging.INFO)
