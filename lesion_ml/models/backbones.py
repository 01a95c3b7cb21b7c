"""Backbone factory: a torchvision/efficientnet network with a single-logit head."""
from __future__ import annotations

import difflib
import logging

import torch
from torch import nn
from torchvision import models as tvm

log = logging.getLogger(__name__)

_TORCHVISION = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2),
}
BACKBONES = tuple(_TORCHVISION)


class PretrainedWeightsMissing(FileNotFoundError):
    """pretrained: true, but the weight file is not on this machine (no download is attempted)."""


def create_backbone(name: str, pretrained: str = "false", num_classes: int = 1) -> nn.Module:
    """Build `name` with a `num_classes`-output head.

    Args:
        name: one of BACKBONES.
        pretrained: "true" loads ImageNet weights from the torch cache and fails if absent;
            "auto" uses them if cached, else random init with one warning; "false" random init.
            Nothing is ever downloaded.
    """
    if name not in _TORCHVISION:
        close = difflib.get_close_matches(name, BACKBONES, n=3)
        raise ValueError(f"unknown backbone {name!r}; close matches: {close}; available: {list(BACKBONES)} "
                         "(params.yaml train_cnn.models.<name>.backbone)")
    build, weights = _TORCHVISION[name]
    model = build(weights=None)
    if pretrained in ("true", "auto"):
        path = _cached_weight_file(weights)
        if path is not None:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        elif pretrained == "true":
            raise PretrainedWeightsMissing(
                f"ImageNet weights for {name} are not on this machine; put {weights.url.rsplit('/', 1)[-1]} "
                f"in {torch.hub.get_dir()}/checkpoints/ or set pretrained: auto|false "
                "(params.yaml train_cnn.models.<name>.pretrained)")
        else:
            log.warning("no cached ImageNet weights for %s; training from random initialisation", name)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _cached_weight_file(weights: tvm.WeightsEnum) -> str | None:
    import os

    path = os.path.join(torch.hub.get_dir(), "checkpoints", weights.url.rsplit("/", 1)[-1])
    return path if os.path.isfile(path) else None
