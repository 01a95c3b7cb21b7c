"""Hyperparameter tuning: Optuna studies with nested cross-validation (study), the data and the models
a trial fits (data, fit), and what the studies found with their report (report). Data in, data out:
the tune stage's tasks read the tables and write the report folder."""
