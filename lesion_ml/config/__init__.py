"""Typed configuration: one frozen pydantic model per params.yaml section."""
from __future__ import annotations

from lesion_ml.config.cnn import (AugmentConfig, BalanceConfig, CnnModelConfig, EarlyStoppingConfig, FusionConfig,
                                  MinoritySetConfig, TrainCnnConfig)
from lesion_ml.config.data import (DataConfig, FeatureFamily, FolderConfig, FolderFormat, PrepareConfig, SelectConfig,
                                   SplitConfig, SyntheticConfig, TrainGbdtConfig)
from lesion_ml.config.evaluate import EvaluateConfig, FinalConfig, OrchestrationConfig, RetrainConfig
from lesion_ml.config.params import (REPLACED_WHOLE, Params, apply_override, check_space, load_params, merge_params,
                                     to_plain, validate_params)
from lesion_ml.config.tune import UNTUNABLE, SearchParam, StudyConfig, TuneConfig, set_dotted, tunable_names
from lesion_ml.config.validate import RENAMED_SECTIONS, ExternalSetConfig, ValidateConfig, renamed_sections
from lesion_ml.errors import ConfigError

__all__ = [
    "AugmentConfig", "BalanceConfig", "CnnModelConfig", "ConfigError", "DataConfig", "EarlyStoppingConfig",
    "EvaluateConfig", "ExternalSetConfig", "FeatureFamily", "FinalConfig", "FolderConfig", "FolderFormat",
    "FusionConfig", "MinoritySetConfig", "OrchestrationConfig", "Params", "PrepareConfig", "RENAMED_SECTIONS",
    "REPLACED_WHOLE", "RetrainConfig", "SearchParam", "SelectConfig", "SplitConfig", "StudyConfig", "SyntheticConfig",
    "TrainCnnConfig", "TrainGbdtConfig", "TuneConfig", "UNTUNABLE", "ValidateConfig", "apply_override", "check_space",
    "load_params", "merge_params", "renamed_sections", "set_dotted", "to_plain", "tunable_names", "validate_params",
]
