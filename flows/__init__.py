"""Prefect flows: one module per DVC stage (`python -m flows.<stage>`)."""
import tasks  # noqa: F401  (sets the quiet, offline environment before prefect is imported)
