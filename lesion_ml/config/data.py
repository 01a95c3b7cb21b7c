"""The sections of the data and metadata stages: data (ingest), split, prepare and train_gbdt."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lesion_ml.artefacts import ISIC2024_RAW
from lesion_ml.config.base import Section


class SyntheticConfig(Section):
    """The generated demo data set (ISIC 2024 format)."""

    n_patients: int = Field(160, ge=2, description="number of patients")
    lesions_per_patient: tuple[int, int] = Field((4, 14), description="[min, max] lesions drawn per patient "
                                                 "(1 <= min <= max); unused when n_lesions is set")
    n_lesions: int | None = Field(None, ge=2, description="a fixed total of lesions, spread heavy-tailed over the "
                                  "patients (at least n_patients); null: lesions_per_patient")
    malignant_fraction: float = Field(0.12, gt=0, lt=1, description="share of malignant lesions")
    n_malignant: int | None = Field(None, ge=1, description="an exact number of malignant lesions (below the "
                                    "number of lesions); null: malignant_fraction of the lesions")
    tile_px: tuple[int, int] = Field((90, 140), description="[min, max] side of the square image tiles in pixels "
                                     "(16 <= min <= max)")
    seed: int = Field(2024, description="random seed: the same settings write the same files")

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

    csv: str = Field("labels.csv", description="the labels CSV, relative to data.path")
    images: str = Field("images", description="the image folder, relative to data.path, searched recursively for "
                        "files named by image id; an image_file column in the CSV (paths relative to data.path) "
                        "names the files instead")
    format: FolderFormat = Field("auto", description="the labels CSV format; auto: detected from its columns (an "
                                 "explicit target column makes it generic)")
    malignant: tuple[str, ...] = Field(("mel", "bcc", "akiec", "ak", "scc"), description="diagnoses (HAM10000 dx, "
                                       "ISIC 2019 classes; any case) counted as malignant; the others are benign")
    group_column: str | None = Field(None, description="the column whose value groups images into one fold (one "
                                     "patient); null: the CSV's patient_id, else its lesion_id, else each image "
                                     "is its own patient")


class DataConfig(Section):
    """Where the images and labels come from (stage `ingest`), and how bad images are handled."""

    source: Literal["synthetic", "isic2024", "folder"] = Field(
        "synthetic", description="synthetic: a generated demo set (data.synthetic); isic2024: an ISIC 2024 folder "
        "(metadata CSV plus train-image.hdf5 or a folder of JPEGs); folder: images plus a labels CSV (data.folder)")
    path: str = Field(ISIC2024_RAW.as_posix(), description="the data folder (isic2024 and folder sources)")
    metadata_csv: str = Field("train-metadata.csv", description="the metadata CSV of an isic2024 source, relative "
                              "to data.path")
    image_dir: str | None = Field(None, description="an isic2024 source's image folder, relative to data.path; null: "
                                  "train-image/image or images (train-image.hdf5 is used when present)")
    on_bad_image: Literal["error", "skip"] = Field("error", description="a row whose image is missing or corrupt: "
                                                   "error stops the ingest; skip drops the row and lists it in the "
                                                   "ingest report")
    verify_images: Literal["none", "header", "decode"] = Field(
        "header", description="the check of every image at ingest: none; header: the file's start and end markers "
        "(catches empty and truncated files); decode: a full decode")
    synthetic: SyntheticConfig = SyntheticConfig()
    folder: FolderConfig = FolderConfig()


class SplitConfig(Section):
    """The cross-validation folds (stage `split`): patient-grouped and stratified by target."""

    n_folds: int = Field(5, ge=2, description="number of folds; no patient is in two folds")
    seed: int = Field(42, description="random seed of the fold assignment")


FeatureFamily = Literal["size_shape", "colour", "border", "position", "patient_relative"]


class SelectConfig(Section):
    """Feature selection inside each training fold: correlated columns pruned, then the k best kept."""

    method: Literal["mutual_info", "f_classif", "chi2", "l1", "gbdt"] = Field(
        "mutual_info", description="how columns are scored: mutual information, ANOVA F, chi-squared, "
        "L1-penalised logistic regression or LightGBM importance")
    k: int = Field(20, ge=1, description="columns kept")
    correlation_threshold: float | None = Field(0.95, gt=0, le=1, description="of two columns correlated above "
                                                "this, one is dropped; null: no pruning")
    max_rows: int | None = Field(10_000, ge=100, description="rows scored for selection (all positives kept)")


class PrepareConfig(Section):
    """The metadata features (stage `prepare`): engineered features, clipping, imputation, encoding and
    selection, fitted on each training fold."""

    features: tuple[FeatureFamily, ...] = Field(
        ("size_shape", "colour", "border", "position", "patient_relative"), description="engineered feature "
        "families added to the metadata; patient_relative: each feature's z-score and rank within the patient")
    impute: Literal["median", "knn", "iterative"] = Field("median", description="how missing values are filled "
                                                          "(with missing-value indicators); only median can be "
                                                          "exported in the final model")
    clip_quantiles: tuple[float, float] = Field((0.001, 0.999), description="[low, high] quantiles each numeric "
                                                "column is clipped to (0 <= low < high <= 1)")
    exclude_columns: tuple[str, ...] = Field(
        (), description="columns of the data that never become features (nor engineered ones), though they stay in "
        "the lesion table for grouping and subgroups: a site or scanner label, or the image size of a resized set, "
        "would be a shortcut that fits one collection and fails in another clinic")
    select: SelectConfig = SelectConfig()
    fit_rows: int | None = Field(100_000, ge=100, description="training rows the clipping/imputation/encoding "
                                 "is fitted on (all positives kept); null: all")
    seed: int = Field(42, description="random seed of the row samples, the iterative imputer and the selection")

    @model_validator(mode="after")
    def _quantiles(self) -> PrepareConfig:
        lo, hi = self.clip_quantiles
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"clip_quantiles must be [low, high] with 0 <= low < high <= 1, got {[lo, hi]}")
        return self


class TrainGbdtConfig(Section):
    """The LightGBM metadata model (stage `train_gbdt`), one per fold; also the stack's settings."""

    n_estimators: int = Field(300, ge=1, description="boosting rounds")
    learning_rate: float = Field(0.05, gt=0, description="shrinkage of each round")
    num_leaves: int = Field(15, ge=2, description="most leaves per tree")
    min_child_samples: int = Field(10, ge=1, description="fewest rows in a leaf")
    subsample: float = Field(0.8, gt=0, le=1, description="share of rows each tree sees")
    colsample_bytree: float = Field(0.8, gt=0, le=1, description="share of columns each tree sees")
    reg_lambda: float = Field(1.0, ge=0, description="L2 regularisation of the leaf values")
    balance: Literal["class_weight", "downsample", "none"] = Field(
        "downsample", description="how the rare malignant class is handled: class_weight: balanced class weights; "
        "downsample: neg_per_pos negatives per positive; none")
    neg_per_pos: float = Field(20.0, gt=0, description="negatives kept per positive when balance=downsample")
    seeds: tuple[int, ...] = Field((42, 43, 44), min_length=1, description="one model per seed, their "
                                   "predictions averaged")
    n_jobs: int = Field(2, ge=1, description="LightGBM threads")
