"""The sections after training: evaluate, final, external (validation sets), retrain and orchestration."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from lesion_ml.config.base import _Section, _file_names
from lesion_ml.config.data import FolderFormat


class EvaluateConfig(_Section):
    """How models are compared (see lesion_ml/evaluate)."""

    threshold_method: Literal["sensitivity", "youden", "fixed"] = Field(
        "sensitivity", description="sensitivity: highest threshold reaching target_sensitivity on the OOF scores; "
        "youden: max sensitivity + specificity - 1; fixed: `threshold`")
    target_sensitivity: float = Field(0.95, gt=0, le=1)
    threshold: float = Field(0.5, gt=0, lt=1, description="the threshold when threshold_method is fixed")
    bootstrap: int = Field(1000, ge=0, description="patient-level bootstrap resamples for the 95% intervals")
    calibration_bins: int = Field(10, ge=2)
    ensembles: bool = Field(True, description="add mean and rank-average ensembles of all models")
    stack: bool = Field(True, description="add a LightGBM over the metadata features + image OOF scores")
    calibrate: Literal["none", "isotonic", "platt"] = Field("none", description="cross-fitted calibration of "
                                                            "every model's scores before the metrics")
    select_metric: Literal["roc_auc", "pauc_80", "pr_auc"] = Field(
        "pauc_80", description="the metric that names reports/metrics.json's best_model (ISIC 2024 ranks by pauc_80)")
    seed: int = 0


class FinalConfig(_Section):
    """The model exported to models/final (stage `final`): retrained on every labelled row."""

    model: str = Field("best", description="best (evaluate's best_model) or a model name of reports/metrics.json")
    fallback: str | None = Field(None, description="an image-only model of train_cnn.models also exported, used "
                                 "by `lesion predict` for images without metadata; null: metadata is required")
    seed_offset: int = Field(1000, ge=0, description="the final CNNs train with seed + this (the folds used seed + k)")


class RetrainConfig(_Section):
    """The scheduled retraining deployment (flows/retrain.py; `lesion server start` serves it)."""

    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$", description="deployment name: retrain/<name>")
    cron: str | None = Field("0 3 * * 1", description="schedule (cron, server time zone); null: on demand only")
    pull: Literal["auto", "always", "never"] = Field("auto", description="dvc pull first (auto: when a remote exists)")
    push: Literal["auto", "always", "never"] = Field("auto", description="dvc push after (auto: when a remote exists)")
    targets: list[str] = Field(default_factory=list, description="stages for dvc repro; empty: all")


class OrchestrationConfig(_Section):
    """Where the per-fold / per-backbone tasks run."""

    task_runner: Literal["local", "dask"] = Field("local", description="local: one after another in the flow's "
                                                  "process; dask: in parallel on a Dask cluster (prefect-dask)")
    dask_address: str | None = Field(None, description="scheduler address (tcp://host:8786); null: a LocalCluster")
    dask_workers: int = Field(2, ge=1, description="LocalCluster worker processes (without dask_address)")


class ExternalSetConfig(_Section):
    """A labelled image set from elsewhere (another clinic, camera or collection), scored by
    models/final in stage `validate@<name>`; never trained on."""

    images: str = Field(description="a folder of images (searched recursively) or an ISIC 2024 HDF5 file")
    labels: str = Field(description="labels CSV: generic, HAM10000, ISIC 2019 or ISIC 2020 (as data.folder)")
    metadata: str | None = Field(None, description="metadata CSV for models that use it (null: the labels CSV)")
    format: FolderFormat = "auto"
    ignore_unlabelled: bool = Field(False, description="score only the labelled images under `images`")


class ValidateConfig(_Section):
    """External validation sets (params section `external`; stage `validate@<name>`, one per set): metrics in reports/external/<name>.json."""

    sets: dict[str, ExternalSetConfig] = Field(default_factory=dict, description="name -> external set; "
                                               "none by default")
    tta: bool = Field(False, description="average the 8 flips/quarter turns of each image")
    bootstrap: int = Field(1000, ge=0, description="resamples for the 95% intervals")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("sets")
    @classmethod
    def _names(cls, v: dict[str, ExternalSetConfig]) -> dict[str, ExternalSetConfig]:
        return _file_names(v, "set", "reports/external/")
