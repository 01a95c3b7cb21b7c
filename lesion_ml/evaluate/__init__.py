"""Comparing models on the same out-of-fold rows: metrics, bootstrap intervals and subgroups, calibration,
ensembles and stacking, and the HTML report."""
