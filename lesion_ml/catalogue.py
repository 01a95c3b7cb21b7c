"""The model catalogue: every model the pipeline trains or derives, as a typed `ModelRef`.

A model's kind, how its score is built from other models' scores, which image models it needs
and whether it needs metadata are decided here, once, from params.yaml; evaluate, final,
predict and explain ask a `ModelRef` instead of reading a model's name. The names are the ones
reports/metrics.json, the out-of-fold score tables and the model bundle use.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict

from lesion_ml.config import CnnModelConfig, EvaluateConfig

GBDT = "gbdt"
MEAN, RANK, STACK = "ensemble_mean", "ensemble_rank", "stack_gbdt_images"


class ModelRef(BaseModel):
    """One model of the catalogue.

    Attributes:
        name: its name in reports/metrics.json, the score tables and params.yaml final.model.
        kind: gbdt (the metadata model), cnn (an image model), ensemble or stack.
        combine: how its score is built from `components`' scores: single (its own), mean,
            rank (mean percentile rank) or stack (LightGBM over the metadata and the scores).
        components: the base models whose scores it combines (itself for a base model).
        cnns: the train_cnn.models keys of the image models it needs.
        needs_metadata: whether scoring it needs a metadata row per image.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["gbdt", "cnn", "ensemble", "stack"]
    combine: Literal["single", "mean", "rank", "stack"]
    components: tuple[str, ...]
    cnns: tuple[str, ...] = ()
    needs_metadata: bool = True

    @property
    def is_probability(self) -> bool:
        """False for the rank ensemble: a percentile rank is not a probability (not calibrated)."""
        return self.combine != "rank"

    @property
    def raw(self) -> str:
        """The column of its scores before calibration in the evaluated score table."""
        return f"{self.name}__raw"


def gbdt_ref() -> ModelRef:
    return ModelRef(name=GBDT, kind="gbdt", combine="single", components=(GBDT,))


def cnn_ref(key: str, cfg: CnnModelConfig) -> ModelRef:
    """The image model train_cnn.models.<key>."""
    name = f"cnn_{key}"
    return ModelRef(name=name, kind="cnn", combine="single", components=(name,), cnns=(key,),
                    needs_metadata=cfg.fusion.enabled)


def base_models(cnn_models: Mapping[str, CnnModelConfig]) -> list[ModelRef]:
    """The models trained on the folds: the metadata model, then each of train_cnn.models."""
    return [gbdt_ref(), *(cnn_ref(k, c) for k, c in cnn_models.items())]


def _combined(name: str, kind: str, combine: str, parts: list[ModelRef], metadata: bool) -> ModelRef:
    return ModelRef(name=name, kind=kind, combine=combine, components=tuple(r.name for r in parts),
                    cnns=tuple(k for r in parts for k in r.cnns),
                    needs_metadata=metadata or any(r.needs_metadata for r in parts))


def ensemble_refs(base: list[ModelRef]) -> list[ModelRef]:
    """The mean and the rank ensemble of every base model."""
    return [_combined(MEAN, "ensemble", "mean", base, False), _combined(RANK, "ensemble", "rank", base, False)]


def stack_ref(base: list[ModelRef]) -> ModelRef:
    """LightGBM over the metadata features and the image models' scores."""
    return _combined(STACK, "stack", "stack", image_models(base), True)


def image_models(refs: Iterable[ModelRef]) -> list[ModelRef]:
    return [r for r in refs if r.kind == "cnn"]


def derived_models(base: list[ModelRef], cfg: EvaluateConfig) -> list[ModelRef]:
    """What evaluate adds to the base models: the ensembles (`evaluate.ensembles`, with two base
    models or more) and the stack (`evaluate.stack`, with an image model)."""
    out = ensemble_refs(base) if cfg.ensembles and len(base) > 1 else []
    return out + ([stack_ref(base)] if cfg.stack and image_models(base) else [])


def find(name: str, cnn_models: Mapping[str, CnnModelConfig]) -> ModelRef:
    """The model params.yaml final.model names, whatever evaluate's settings were.

    Raises:
        ValueError: an unknown name, listing the allowed ones.
    """
    base = base_models(cnn_models)
    refs = {r.name: r for r in [*base, *ensemble_refs(base), stack_ref(base)]}
    if name not in refs:
        raise ValueError(f"unknown model {name!r}; allowed: {list(refs)} (params.yaml final.model)")
    return refs[name]
