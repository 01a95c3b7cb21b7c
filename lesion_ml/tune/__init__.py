"""Hyperparameter tuning: Optuna studies with nested cross-validation, their report, and the tune stage's plan and
files."""
