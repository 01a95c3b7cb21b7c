"""The tuning sections (params section `tune`), the params a study starts from (`TuneBase`) and the
names a study may search."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from lesion_ml.artefacts import TUNE, TUNE_STORAGE
from lesion_ml.config.base import file_names, Section
from lesion_ml.config.cnn import CnnModelConfig, TrainCnnConfig
from lesion_ml.config.data import PrepareConfig, TrainGbdtConfig
from lesion_ml.errors import ConfigError


class SearchParam(Section):
    """One tuned parameter (Optuna's distributions): a float or int range, optionally on a log
    scale, or a list of choices."""

    type: Literal["float", "int", "categorical"] = Field("float", description="a float or int range (low, high), "
                                                         "or categorical (choices)")
    low: float | None = Field(None, description="lower end of the range, below high (whole for int)")
    high: float | None = Field(None, description="upper end of the range (whole for int)")
    log: bool = Field(False, description="sample the range on a log scale (low must be > 0)")
    choices: tuple[str | int | float | bool | None, ...] | None = Field(None, description="the values tried "
                                                                        "(type categorical only)")

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


class StudyConfig(Section):
    """One tuning study (stage `tune@<name>`): a search space over params.yaml keys, scored by
    patient-grouped inner cross-validation inside each outer training fold (lesion_ml/tune/study.py)."""

    model: str = Field("gbdt", description="gbdt: the LightGBM metadata model (space keys train_gbdt.* and "
                       "prepare.*); or a name of train_cnn.models (keys train_cnn.models.<name>.*)")
    space: dict[str, SearchParam] = Field(min_length=1, description="params.yaml key (dotted) -> its range")
    metric: Literal["pauc_80", "roc_auc", "pr_auc"] = Field("pauc_80", description="the inner cross-validation "
                                                            "score a study maximises")
    n_trials: int = Field(40, ge=1, description="finished trials per study (each outer fold's and the final one)")
    timeout_s: float | None = Field(None, gt=0, description="time budget of each study in seconds; null: none")
    inner_folds: int = Field(3, ge=2, description="patient-grouped folds inside each outer training fold")
    score_negatives: int | None = Field(20_000, ge=100, description="benign rows a trial predicts per inner "
                                        "validation fold (a fixed random sample, every malignant row kept; the "
                                        "same rows for every trial); null: all")
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna's sampler: tpe (Bayesian) or random")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="stops a trial whose intermediate values (per inner fold; per epoch for an image "
        "model) fall behind")
    seed: int = Field(0, description="random seed of the sampler")


class TuneConfig(Section):
    """Hyper-parameter studies (params section `tune`; stage `tune@<name>`, one per study; none by default)."""

    studies: dict[str, StudyConfig] = Field(default_factory=dict, description="the studies, by name; none by "
                                            "default")
    storage: str | None = Field(None, description="SQLAlchemy URL of the Optuna database (postgresql://... for "
                                f"several machines); null: {TUNE_STORAGE}. LESION_TUNE_STORAGE in the "
                                "environment takes precedence")
    parallel: int = Field(1, ge=1, description="trial tasks per study at once (in parallel with "
                          "orchestration.task_runner: dask)")
    bootstrap: int = Field(1000, ge=0, description="patient-level resamples for default vs tuned intervals")

    @field_validator("studies")
    @classmethod
    def _names(cls, v: dict[str, StudyConfig]) -> dict[str, StudyConfig]:
        return file_names(v, "study", f"{TUNE.as_posix()}/")


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


CNN_MODELS = "train_cnn.models."  # the params.yaml prefix of an image model's keys


class TuneBase(Section):
    """The params a tuning study starts from, and all it reads of params.yaml: prepare and
    train_gbdt for the metadata model; train_cnn.models and train_cnn's device and loader workers
    for an image model. Build it with `TuneBase.of`. A trial's values are dotted params.yaml keys
    (`train_gbdt.num_leaves`, `train_cnn.models.<name>.lr`): see `with_values` and `value`."""

    prepare: PrepareConfig
    train_gbdt: TrainGbdtConfig
    models: dict[str, CnnModelConfig]  # train_cnn.models
    device: str  # train_cnn.device
    num_workers: int  # train_cnn.num_workers

    @classmethod
    def of(cls, prepare: PrepareConfig, train_gbdt: TrainGbdtConfig, train_cnn: TrainCnnConfig) -> TuneBase:
        """The tuning base of three params.yaml sections."""
        return cls(prepare=prepare, train_gbdt=train_gbdt, models=dict(train_cnn.models), device=train_cnn.device,
                   num_workers=train_cnn.num_workers)

    def value(self, key: str) -> Any:
        """The value of the dotted params.yaml key `key` (a key tuning may set), as params.yaml spells it."""
        node: Any = self.model_dump(mode="json")
        for part in _field_key(key).split("."):
            node = node[part]
        return node

    def with_values(self, values: dict[str, Any]) -> TuneBase:
        """A copy with each dotted params.yaml key of `values` set, validated as params.yaml is.

        Raises:
            ConfigError: a value its key does not accept, naming the key (as params.yaml spells it).
            ValueError: a key outside prepare, train_gbdt and train_cnn.models.
        """
        raw = set_dotted(self.model_dump(mode="json"), {_field_key(k): v for k, v in values.items()})
        try:
            return TuneBase.model_validate(raw)
        except ValidationError as err:
            lines = "\n".join(_error_line(e) for e in err.errors())
            raise ConfigError(f"invalid configuration in a tuning trial:\n{lines}") from None


def _field_key(key: str) -> str:
    """The dotted params.yaml key `key` as a dotted key of TuneBase."""
    if key.startswith(CNN_MODELS):
        return "models." + key.removeprefix(CNN_MODELS)
    if key.split(".")[0] in ("prepare", "train_gbdt"):
        return key
    raise ValueError(f"{key!r} is not a key tuning may set (prepare.*, train_gbdt.*, {CNN_MODELS}<name>.*)")


def _error_line(e: dict[str, Any]) -> str:
    """One validation error of a TuneBase, named by its params.yaml key (as validate_params words it)."""
    key = ".".join(str(p) for p in e["loc"])
    key = "train_cnn." + key if key.startswith("models") else key
    if e["type"] == "extra_forbidden":
        return f"  {key}: unknown key (value {e['input']!r}); check the spelling"
    return f"  {key}: {e['msg']} (found {e['input']!r})"


def tunable_names(base: TuneBase, model: str) -> list[str]:
    """The dotted params.yaml keys a study of `model` may search (gbdt, or a train_cnn.models name)."""
    if model == "gbdt":
        return _leaves(base.train_gbdt, "train_gbdt") + _leaves(base.prepare, "prepare")
    if model in base.models:
        return _leaves(base.models[model], f"{CNN_MODELS}{model}")
    raise ValueError(f"model {model!r} is neither gbdt nor a name of train_cnn.models "
                     f"({sorted(base.models)})")


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
