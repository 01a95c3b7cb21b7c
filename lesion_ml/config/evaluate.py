"""The sections after training: evaluate, final, retrain and orchestration (validate: config/validate.py)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from lesion_ml.config.base import Section


class EvaluateConfig(Section):
    """How models are compared (see lesion_ml/evaluate)."""

    threshold_method: Literal["sensitivity", "youden", "fixed"] = Field(
        "sensitivity", description="sensitivity: highest threshold reaching target_sensitivity on the OOF scores; "
        "youden: max sensitivity + specificity - 1; fixed: `threshold`")
    target_sensitivity: float = Field(0.95, gt=0, le=1, description="the sensitivity the threshold reaches when "
                                      "threshold_method is sensitivity")
    threshold: float = Field(0.5, gt=0, lt=1, description="the threshold when threshold_method is fixed")
    bootstrap: int = Field(1000, ge=0, description="patient-level bootstrap resamples for the 95% intervals")
    calibration_bins: int = Field(10, ge=2, description="equal-width bins of the calibration error and "
                                  "reliability table")
    ensembles: bool = Field(True, description="add mean and rank-average ensembles of all models")
    stack: bool = Field(True, description="add a LightGBM over the metadata features + image OOF scores")
    calibrate: Literal["none", "isotonic", "platt"] = Field("none", description="cross-fitted calibration of "
                                                            "every model's scores before the metrics")
    select_metric: Literal["roc_auc", "pauc_80", "pr_auc"] = Field(
        "pauc_80", description="the metric that names reports/metrics.json's best_model (ISIC 2024 ranks by pauc_80)")
    seed: int = Field(0, description="random seed of the bootstrap resamples")


class FinalConfig(Section):
    """The model exported to models/final (stage `final`): retrained on every labelled row, or its image
    models the mean of their fold models (`image_models`)."""

    model: str = Field("best", description="best (evaluate's best_model) or a model name of reports/metrics.json")
    fallback: str | None = Field(None, description="an image-only model of train_cnn.models also exported, used "
                                 "by `lesion predict` for images without metadata; null: metadata is required")
    seed_offset: int = Field(1000, ge=0, description="the final CNNs train with seed + this (the folds used seed + k)")
    image_models: Literal["retrain", "fold_average"] = Field(
        "retrain", description="retrain: each exported image model trained again on every labelled row; "
        "fold_average: the mean logit of its cross-validation fold models, nothing trained again (the out-of-fold "
        "threshold is then that of the exported models; image-only models)")


class RetrainConfig(Section):
    """The scheduled retraining deployment (flows/retrain.py; `lesion server start` serves it)."""

    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$", description="deployment name: retrain/<name>")
    cron: str | None = Field("0 3 * * 1", description="schedule (cron, in UTC); null: on demand only")
    pull: Literal["auto", "always", "never"] = Field("auto", description="dvc pull first (auto: when a remote exists)")
    push: Literal["auto", "always", "never"] = Field("auto", description="dvc push after (auto: when a remote exists)")
    targets: list[str] = Field(default_factory=list, description="stages for dvc repro; empty: all")


class OrchestrationConfig(Section):
    """Where the per-fold / per-backbone tasks run."""

    task_runner: Literal["local", "dask"] = Field("local", description="local: one after another in the flow's "
                                                  "process; dask: in parallel on a Dask cluster (prefect-dask)")
    dask_address: str | None = Field(None, description="scheduler address (tcp://host:8786); null: a local Dask "
                                     "cluster on this machine")
    dask_workers: int = Field(2, ge=1, description="worker processes of the local Dask cluster (without "
                              "dask_address)")
