"""The sections of the data and metadata stages: data (ingest), split, prepare and train_gbdt."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lesion_ml.artefacts import ISIC2024_RAW
from lesion_ml.config.base import Section


class SyntheticConfig(Section):
    """The generated demo data set (ISIC 2024 format)."""

    n_patients: int = Field(160, ge=2)
    lesions_per_patient: tuple[int, int] = (4, 14)
    n_lesions: int | None = Field(None, ge=2)  # a fixed total (heavy-tailed over patients); null: per patient
    malignant_fraction: float = Field(0.12, gt=0, lt=1)
    n_malignant: int | None = Field(None, ge=1)  # an exact count; null: round(malignant_fraction * lesions)
    tile_px: tuple[int, int] = (90, 140)
    seed: int = 2024

    @model_validator(mode="after")
    def _ordered(self) -> SyntheticConfig:
        lo, hi = self.lesions_per_patient
        if not 1 <= lo <= hi:
            raise ValueError(f"lesions_per_patient must be [min, max] with 1 <= min <= max, got {[lo, hi]}")
        lo, hi = self.tile_px
        if not 16 <= lo <= hi:
            raise ValueError(f"tile_px must be [min, max] with 16 <= min <= max, got {[lo, hi]}")
        if self.n_lesions is not None and self.n_lesions < self.n_patients:
            raise ValueError(f"n_lesions ({self.n_lesions}) must be at least n_patients ({self.n_patients}): "
                             "every patient has a lesion")
        total = self.n_lesions if self.n_lesions is not None else self.n_patients * self.lesions_per_patient[0]
        if self.n_malignant is not None and self.n_malignant >= total:
            raise ValueError(f"n_malignant ({self.n_malignant}) must be below the number of lesions ({total})")
        return self


FolderFormat = Literal["auto", "generic", "isic2019", "isic2020", "ham10000"]


class FolderConfig(Section):
    """An image folder plus a CSV (ISIC 2019/2020, HAM10000 or a generic labels file)."""

    csv: str = "labels.csv"
    images: str = "images"
    format: FolderFormat = "auto"
    malignant: tuple[str, ...] = ("mel", "bcc", "akiec", "ak", "scc")
    group_column: str | None = None


class DataConfig(Section):
    source: Literal["synthetic", "isic2024", "folder"] = "synthetic"
    path: str = ISIC2024_RAW.as_posix()
    metadata_csv: str = "train-metadata.csv"
    image_dir: str | None = None
    on_bad_image: Literal["error", "skip"] = "error"
    verify_images: Literal["none", "header", "decode"] = "header"
    synthetic: SyntheticConfig = SyntheticConfig()
    folder: FolderConfig = FolderConfig()


class SplitConfig(Section):
    n_folds: int = Field(5, ge=2)
    seed: int = 42


FeatureFamily = Literal["size_shape", "colour", "border", "position", "patient_relative"]


class SelectConfig(Section):
    method: Literal["mutual_info", "f_classif", "chi2", "l1", "gbdt"] = "mutual_info"
    k: int = Field(20, ge=1)
    correlation_threshold: float | None = Field(0.95, gt=0, le=1)
    max_rows: int | None = Field(10_000, ge=100, description="rows scored for selection (all positives kept)")


class PrepareConfig(Section):
    features: tuple[FeatureFamily, ...] = ("size_shape", "colour", "border", "position", "patient_relative")
    impute: Literal["median", "knn", "iterative"] = "median"
    clip_quantiles: tuple[float, float] = (0.001, 0.999)
    select: SelectConfig = SelectConfig()
    fit_rows: int | None = Field(100_000, ge=100, description="training rows the clipping/imputation/encoding "
                                 "is fitted on (all positives kept); null: all")
    seed: int = 42

    @model_validator(mode="after")
    def _quantiles(self) -> PrepareConfig:
        lo, hi = self.clip_quantiles
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"clip_quantiles must be [low, high] with 0 <= low < high <= 1, got {[lo, hi]}")
        return self


class TrainGbdtConfig(Section):
    n_estimators: int = Field(300, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(15, ge=2)
    min_child_samples: int = Field(10, ge=1)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    balance: Literal["class_weight", "downsample", "none"] = "downsample"
    neg_per_pos: float = Field(20.0, gt=0, description="negatives kept per positive when balance=downsample")
    seeds: tuple[int, ...] = Field((42, 43, 44), min_length=1)
    n_jobs: int = Field(2, ge=1)
