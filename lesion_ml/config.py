"""Typed configuration: one frozen pydantic model per params.yaml section.

`load_params` validates the whole file once; library functions take the narrowest
section they need. Unknown keys are errors (``extra="forbid"``) so that a typo in
params.yaml fails loudly instead of being silently ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lesion_ml.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(_Section):
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


class FolderConfig(_Section):
    """An image folder plus a CSV (ISIC 2019/2020, HAM10000 or a generic labels file)."""

    csv: str = "labels.csv"
    images: str = "images"
    format: FolderFormat = "auto"
    malignant: tuple[str, ...] = ("mel", "bcc", "akiec", "ak", "scc")
    group_column: str | None = None


class DataConfig(_Section):
    source: Literal["synthetic", "isic2024", "folder"] = "synthetic"
    path: str = "data/raw/isic2024"
    metadata_csv: str = "train-metadata.csv"
    image_dir: str | None = None
    on_bad_image: Literal["error", "skip"] = "error"
    verify_images: Literal["none", "header", "decode"] = "header"
    synthetic: SyntheticConfig = SyntheticConfig()
    folder: FolderConfig = FolderConfig()


class SplitConfig(_Section):
    n_folds: int = Field(5, ge=2)
    seed: int = 42


FeatureFamily = Literal["size_shape", "colour", "border", "position", "patient_relative"]


class SelectConfig(_Section):
    method: Literal["mutual_info", "f_classif", "chi2", "l1", "gbdt"] = "mutual_info"
    k: int = Field(20, ge=1)
    correlation_threshold: float | None = Field(0.95, gt=0, le=1)
    max_rows: int | None = Field(10_000, ge=100, description="rows scored for selection (all positives kept)")


class PrepareConfig(_Section):
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


class TrainGbdtConfig(_Section):
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


class AugmentConfig(_Section):
    """Training augmentation: each value is the probability of that family (0 turns it off)."""

    flip: float = Field(0.5, ge=0, le=1, description="horizontal and vertical flips")
    rotate90: float = Field(0.5, ge=0, le=1, description="90-degree turns and transposes")
    affine: float = Field(0.5, ge=0, le=1, description="rotate +-45 deg, scale 0.85-1.15, shift +-6%")
    brightness_contrast: float = Field(0.5, ge=0, le=1)
    hue_saturation: float = Field(0.3, ge=0, le=1)
    blur_noise: float = Field(0.2, ge=0, le=1, description="Gaussian/motion blur or Gaussian noise")
    dropout: float = Field(0.2, ge=0, le=1, description="coarse dropout: 1-4 black rectangles")
    hair: float = Field(0.0, ge=0, le=1, description="dark hair-like curves drawn over the lesion")
    zoom_out: float = Field(0.0, ge=0, le=1, description="shrink the image to 50-90% on a canvas of its border "
                            "colour: the lesion seen from further away, as other dermatoscopes frame it")
    frame: float = Field(0.0, ge=0, le=1, description="black outside a circle: the round field of view of "
                         "contact dermatoscopes")


class BalanceConfig(_Section):
    """How the rare malignant class is weighted (see lesion_ml/balance.py)."""

    sampler: Literal["none", "weighted", "downsample"] = "none"
    neg_per_pos: float = Field(10.0, gt=0, description="negatives per positive an epoch draws "
                               "(weighted: expected; downsample: all positives + this many negatives each)")
    loss: Literal["bce", "focal"] = "bce"
    focal_gamma: float = Field(2.0, ge=0)
    pos_weight: float | Literal["auto"] = Field("auto", description="positive-class loss weight; auto: "
                                                "negatives/positives with sampler none, else 1")
    minority_set: bool = Field(False, description="add the augmented copies of the training positives "
                                                  "(train_cnn.minority_set)")

    @field_validator("pos_weight")
    @classmethod
    def _positive(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v <= 0:
            raise ValueError("pos_weight must be 'auto' or a number > 0")
        return v


class FusionConfig(_Section):
    """Image + metadata: backbone features joined with an MLP over the fold's selected features."""

    enabled: bool = False
    hidden: int = Field(64, ge=1, description="width of the metadata MLP")
    dropout: float = Field(0.2, ge=0, lt=1)


class EarlyStoppingConfig(_Section):
    """Stop when the metric on a patient-grouped holdout of the training rows stops improving;
    the best epoch's weights predict the validation fold (which never steers training)."""

    metric: Literal["none", "auc", "pauc"] = "none"
    patience: int = Field(3, ge=1)
    holdout: float = Field(0.1, gt=0, lt=0.5, description="share of training patients held out")


class CnnModelConfig(_Section):
    """One entry of train_cnn.models (a DVC foreach item)."""

    backbone: Literal["resnet18", "resnet34", "resnet50", "efficientnet-b0", "efficientnet-b1", "efficientnet-b2",
                      "efficientnet-b3", "efficientnet-lite0"] = "resnet18"
    pretrained: Literal["auto", "true", "false"] = "false"
    image_size: int = Field(64, ge=16)
    resize: Literal["squash", "pad", "crop"] = Field("squash", description="squash: resize to a square; pad: "
                                                     "keep the aspect, pad the short side; crop: centre square")
    colour_constancy: Literal["none", "shades_of_grey"] = Field(
        "none", description="shades_of_grey: Shades of Grey colour normalisation (Minkowski p=6) of every image, "
        "in training, prediction and explanation alike")
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(64, ge=2, description="at least 2: BatchNorm layers cannot train on one image")
    eval_batch_size: int | None = Field(None, ge=1, description="images per batch when predicting (holdout, "
                                        "validation, out-of-fold); null: twice batch_size")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    warmup_epochs: int = Field(0, ge=0, description="first epochs train the head only (backbone frozen)")
    backbone_lr_mult: float = Field(1.0, gt=0, le=1, description="backbone lr = lr x this (discriminative lr)")
    augment: AugmentConfig = AugmentConfig()
    balance: BalanceConfig = BalanceConfig()
    fusion: FusionConfig = FusionConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    ema_half_life: float = Field(0.0, ge=0, description="keep an exponential moving average of the weights with this "
                                 "half-life in epochs, and score, keep and export the average instead of the "
                                 "last weights; 0: off")
    tta: bool = Field(False, description="score the validation fold (so the out-of-fold metrics and threshold) and "
                      "new images as the mean over the 8 flips and quarter turns of each image")
    monitor_valid: bool = Field(False, description="also score the validation fold after every epoch "
                                                   "(for the plots only; never used to choose anything)")
    seed: int = 42

    @model_validator(mode="after")
    def _warmup(self) -> CnnModelConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        return self


class MinoritySetConfig(_Section):
    """Augmented copies of every malignant image, written once (DVC-cached) and used by the
    models whose balance.minority_set is true (only copies of their training positives)."""

    copies: int = Field(0, ge=0, description="augmented copies per malignant image; 0: none")
    max_side: int = Field(256, ge=16, description="copies are stored with at most this many pixels a side")
    augment: AugmentConfig = AugmentConfig(flip=0.5, rotate90=0.75, affine=0.9, brightness_contrast=0.7,
                                           hue_saturation=0.5, blur_noise=0.3, dropout=0.0, hair=0.2)
    seed: int = 7


class TrainCnnConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0)
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 keeps torch's default")
    minority_set: MinoritySetConfig = MinoritySetConfig()
    models: dict[str, CnnModelConfig] = Field(default_factory=lambda: {"resnet18": CnnModelConfig()})


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


def _file_names(v: dict[str, Any], what: str, folder: str) -> dict[str, Any]:
    """The keys of a named collection whose names become file names."""
    import re

    bad = [k for k in v if not re.fullmatch(r"[A-Za-z0-9_.-]+", k)]
    if bad:
        raise ValueError(f"{what} names {bad} may only use letters, digits, '_', '.' and '-' (they name files "
                         f"in {folder})")
    return v


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


class SearchParam(_Section):
    """One tuned parameter (Optuna's distributions): a float or int range, optionally on a log
    scale, or a list of choices."""

    type: Literal["float", "int", "categorical"] = "float"
    low: float | None = None
    high: float | None = None
    log: bool = Field(False, description="sample the range on a log scale (low must be > 0)")
    choices: tuple[str | int | float | bool | None, ...] | None = None

    @model_validator(mode="after")
    def _range(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("type categorical needs a non-empty list of choices")
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("type categorical takes choices, not low/high/log")
            return self
        if self.choices is not None:
            raise ValueError(f"type {self.type} takes low and high, not choices (or set type: categorical)")
        if self.low is None or self.high is None:
            raise ValueError(f"type {self.type} needs both low and high")
        if not self.low < self.high:
            raise ValueError(f"empty range: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got low {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"type int needs whole-number bounds, got [{self.low}, {self.high}]")
        return self


class StudyConfig(_Section):
    """One tuning study (stage `tune@<name>`): a search space over params.yaml keys, scored by
    patient-grouped inner cross-validation inside each outer training fold (lesion_ml/tune.py)."""

    model: str = Field("gbdt", description="gbdt: the LightGBM metadata model (space keys train_gbdt.* and "
                       "prepare.*); or a name of train_cnn.models (keys train_cnn.models.<name>.*)")
    space: dict[str, SearchParam] = Field(min_length=1, description="params.yaml key (dotted) -> its range")
    metric: Literal["pauc_80", "roc_auc", "pr_auc"] = "pauc_80"
    n_trials: int = Field(40, ge=1, description="finished trials per study (each outer fold's and the final one)")
    timeout_s: float | None = Field(None, gt=0, description="time budget of each study in seconds; null: none")
    inner_folds: int = Field(3, ge=2, description="patient-grouped folds inside each outer training fold")
    score_negatives: int | None = Field(20_000, ge=100, description="benign rows a trial predicts per inner "
                                        "validation fold (a fixed random sample, every malignant row kept; the "
                                        "same rows for every trial); null: all")
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="stops a trial whose intermediate values (per inner fold; per epoch for an image "
        "model) fall behind")
    seed: int = 0


class TuneConfig(_Section):
    """Hyper-parameter studies (params section `tune`; stage `tune@<name>`, one per study; none by default)."""

    studies: dict[str, StudyConfig] = Field(default_factory=dict)
    storage: str | None = Field(None, description="SQLAlchemy URL of the Optuna database (postgresql://... for "
                                "several machines); null: sqlite:///.lesion/optuna.db. LESION_TUNE_STORAGE "
                                "in the environment takes precedence")
    parallel: int = Field(1, ge=1, description="trial tasks per study at once (in parallel with "
                          "orchestration.task_runner: dask)")
    bootstrap: int = Field(1000, ge=0, description="patient-level resamples for default vs tuned intervals")

    @field_validator("studies")
    @classmethod
    def _names(cls, v: dict[str, StudyConfig]) -> dict[str, StudyConfig]:
        return _file_names(v, "study", "reports/tune/")


class Params(_Section):
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    prepare: PrepareConfig = PrepareConfig()
    train_gbdt: TrainGbdtConfig = TrainGbdtConfig()
    train_cnn: TrainCnnConfig = TrainCnnConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    final: FinalConfig = FinalConfig()
    external: ValidateConfig = ValidateConfig()
    tune: TuneConfig = TuneConfig()
    retrain: RetrainConfig = RetrainConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    @model_validator(mode="after")
    def _tune_spaces(self) -> Params:
        for name, study in self.tune.studies.items():
            check_space(self, study, f"tune.studies.{name}")
        return self


# Keys a study may not tune: they set seeds, threads or the data layout, not the model's fit.
UNTUNABLE = {"seeds", "seed", "n_jobs", "features", "clip_quantiles", "fit_rows", "backbone", "pretrained",
             "eval_batch_size", "monitor_valid", "tta", "minority_set"}


def _leaves(section: BaseModel, prefix: str) -> list[str]:
    out = []
    for key in type(section).model_fields:
        value = getattr(section, key)
        if key in UNTUNABLE or isinstance(value, (tuple, list, dict)):
            continue
        out += _leaves(value, f"{prefix}.{key}") if isinstance(value, BaseModel) else [f"{prefix}.{key}"]
    return out


def tunable_names(params: Params, model: str) -> list[str]:
    """The dotted params.yaml keys a study of `model` may search (gbdt, or a train_cnn.models name)."""
    if model == "gbdt":
        return _leaves(params.train_gbdt, "train_gbdt") + _leaves(params.prepare, "prepare")
    if model in params.train_cnn.models:
        return _leaves(params.train_cnn.models[model], f"train_cnn.models.{model}")
    raise ValueError(f"model {model!r} is neither gbdt nor a name of train_cnn.models "
                     f"({sorted(params.train_cnn.models)})")


def set_dotted(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the params mapping `raw` with each dotted key of `values` set (sections created)."""
    import copy

    out = copy.deepcopy(raw)
    for dotted, value in values.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def check_space(params: Params, study: StudyConfig, where: str) -> None:
    """Every key of the study's space names a tunable key of its model, and both ends of its range
    (every choice) are values that key accepts; else a ValueError naming the key."""
    allowed = tunable_names(params, study.model)
    raw = params.model_dump(mode="json", exclude={"tune"})
    for key, dist in study.space.items():
        if key not in allowed:
            raise ValueError(f"{where}.space: {key!r} is not a tunable key of model {study.model!r}; "
                             f"allowed: {', '.join(allowed)}")
        ends = dist.choices if dist.type == "categorical" else (dist.low, dist.high)
        for value in ends:
            value = int(value) if dist.type == "int" else value
            try:
                Params.model_validate(set_dotted(raw, {key: value}))
            except ValidationError as err:
                problem = "; ".join(e["msg"] for e in err.errors())
                remedy = "drop that choice" if dist.type == "categorical" else "narrow the range"
                raise ValueError(f"{where}.space.{key}: the value {value!r} is not allowed for {key} "
                                 f"({problem}); {remedy}") from None


def _format_errors(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if not e["loc"]:  # a check across sections: its message names the keys
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {e['input']!r}); check the spelling")
        else:
            lines.append(f"  {key}: {e['msg']} (found {e['input']!r})")
    return f"invalid configuration in {where}:\n" + "\n".join(lines)


def validate_params(raw: dict[str, Any] | None, where: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ConfigError naming every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, where)) from None


def load_params(path: Path | str = Path("params.yaml")) -> Params:
    """Read and validate a params.yaml file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; run from the repository root or pass --params") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, found {type(raw).__name__}")
    return validate_params(raw, str(path))


REPLACED_WHOLE = ("models", "sets")  # named collections an override replaces instead of merging into


def merge_params(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in section by section, key by key; a named collection
    (train_cnn.models, external.sets) in `override` replaces the one in `base` as a whole, so an
    example lists exactly the models it trains."""
    out = dict(base)
    for key, value in override.items():
        merge = isinstance(value, dict) and isinstance(out.get(key), dict) and key not in REPLACED_WHOLE
        out[key] = merge_params(out[key], value) if merge else value
    return out


def apply_override(override: Path | str, base: Path | str = Path("params.yaml"),
                   out: Path | str | None = None) -> Params:
    """Merge the override file into `base` (see `merge_params`), validate the result (errors name
    the override file) and write it to `out` (default: `base`), atomically."""
    from lesion_ml.io import write_text

    override, base = Path(override), Path(base)
    try:
        over = yaml.safe_load(override.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{override}: no such file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{override}: not valid YAML: {err}") from None
    if not isinstance(over, dict):
        raise ConfigError(f"{override}: expected a mapping of params.yaml sections, found {type(over).__name__}")
    merged = merge_params(yaml.safe_load(base.read_text(encoding="utf-8")) or {}, over)
    params = validate_params(merged, f"{base} merged with {override}")
    write_text(f"# params.yaml merged with {override} (lesion params --merge); `git checkout params.yaml` "
               "returns to the shipped settings\n" + yaml.safe_dump(merged, sort_keys=False), out or base)
    return params


def to_plain(model: BaseModel) -> dict[str, Any]:
    """A JSON/YAML-ready dict of a config section (for writing next to outputs)."""
    return model.model_dump(mode="json")
