"""Data in: ingest into the canonical lesion table, the image store, the demo and full-size generators, patient-
grouped folds and what a trained fold leaves."""
