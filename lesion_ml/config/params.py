"""The whole params.yaml: `Params`, and reading, validating and merging params files.

`load_params` validates the whole file once; library functions take the narrowest
section they need.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError, model_validator

from lesion_ml.config.base import Section
from lesion_ml.config.cnn import TrainCnnConfig
from lesion_ml.config.data import DataConfig, PrepareConfig, SplitConfig, TrainGbdtConfig
from lesion_ml.config.evaluate import EvaluateConfig, FinalConfig, OrchestrationConfig, RetrainConfig
from lesion_ml.config.tune import StudyConfig, TuneBase, TuneConfig, set_dotted, tunable_names
from lesion_ml.config.validate import ValidateConfig, renamed_sections
from lesion_ml.errors import ConfigError

# The section `validate` (stage validate@<name>) shadows pydantic's deprecated classmethod BaseModel.validate, which
# lesion-ml never calls: `Params.model_validate` is the validator.
warnings.filterwarnings("ignore", message='Field name "validate" in "Params" shadows', category=UserWarning)


class Params(Section):
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    prepare: PrepareConfig = PrepareConfig()
    train_gbdt: TrainGbdtConfig = TrainGbdtConfig()
    train_cnn: TrainCnnConfig = TrainCnnConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    final: FinalConfig = FinalConfig()
    validate: ValidateConfig = ValidateConfig()
    tune: TuneConfig = TuneConfig()
    retrain: RetrainConfig = RetrainConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    @model_validator(mode="after")
    def _tune_spaces(self) -> Params:
        for name, study in self.tune.studies.items():
            check_space(self, study, f"tune.studies.{name}")
        return self


def check_space(params: Params, study: StudyConfig, where: str) -> None:
    """Every key of the study's space names a tunable key of its model, and both ends of its range
    (every choice) are values that key accepts; else a ValueError naming the key."""
    allowed = tunable_names(TuneBase.of(params.prepare, params.train_gbdt, params.train_cnn), study.model)
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
        return Params.model_validate(renamed_sections(raw or {}, where))
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
    (train_cnn.models, validate.sets) in `override` replaces the one in `base` as a whole, so an
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
    merged = merge_params(renamed_sections(yaml.safe_load(base.read_text(encoding="utf-8")) or {}, str(base)),
                          renamed_sections(over, str(override)))
    params = validate_params(merged, f"{base} merged with {override}")
    write_text(f"# params.yaml merged with {override} (lesion params --merge); `git checkout params.yaml` "
               "returns to the shipped settings\n" + yaml.safe_dump(merged, sort_keys=False), out or base)
    return params


def to_plain(model: BaseModel) -> dict[str, Any]:
    """A JSON/YAML-ready dict of a config section (for writing next to outputs)."""
    return model.model_dump(mode="json")
