"""How an image model's weights move over a run: the optimiser, the learning-rate schedule and the
moving average of the weights."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lesion_ml.config import CnnModelConfig

__all__ = ["LrShape", "make_optimizer", "make_schedule", "weight_average"]


class LrShape:
    """The learning-rate multiplier of step `s` (0-based) of a run of `total` optimizer steps,
    for `torch.optim.lr_scheduler.LambdaLR`. Defined for every `total` >= 1, so a fold with a
    single batch per epoch (or a single step in all) trains like any other.

    - "onecycle": a cosine rise from 1/25 of the peak to the peak over the first `warmup_share`
      of the steps (none when that is under one step), then a cosine decay to 1/250,000 of
      the peak at the last step (torch's OneCycleLR shape, without its momentum cycling).
    - "cosine": cosine decay from the peak towards 0 over `total` steps (CosineAnnealingLR).

    Plain attributes only: the scheduler's state dict (and so a checkpoint) stores them.
    """

    START, END = 1 / 25, 1 / 25 / 1e4

    def __init__(self, kind: str, total: int, warmup_share: float = 0.3):
        if kind not in ("onecycle", "cosine"):
            raise ValueError(f"unknown schedule {kind!r}; allowed: onecycle, cosine")
        if total < 1:
            raise ValueError(f"a learning-rate schedule needs at least 1 step, got {total}")
        self.kind, self.total = kind, int(total)
        self.peak = min(self.total - 1, round(warmup_share * (self.total - 1))) if kind == "onecycle" else 0

    @staticmethod
    def _cos(start: float, end: float, frac: float) -> float:
        return end + (start - end) * (1 + math.cos(math.pi * frac)) / 2

    def __call__(self, step: int) -> float:
        s = min(max(step, 0), self.total - 1)  # the call after the last step sets no lr that is used
        if self.kind == "cosine":
            return self._cos(1.0, 0.0, s / self.total)
        if s <= self.peak:
            return self._cos(self.START, 1.0, s / self.peak) if self.peak else 1.0
        return self._cos(1.0, self.END, (s - self.peak) / (self.total - 1 - self.peak))


def make_optimizer(groups: list[dict], weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the parameter `groups` (each a dict with "params" and its "lr"), with PyTorch's
    fused kernel: one pass over each weight tensor on the CPU as on CUDA, instead of a dozen
    elementwise operations each (a resnet18 update on one CPU core, weights channels-last as
    training lays them out: about 45 ms instead of 105; the forward and backward pass of 8 images
    at 32 px take about 90). The kernel computes the same update; its rounding differs from the
    loop's in the last bits."""
    return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)


def make_schedule(cfg: CnnModelConfig, optimizer: torch.optim.Optimizer, steps: int):
    """The scheduler of `cfg.schedule` over `steps` optimizer steps (the whole run)."""
    shape = LrShape(cfg.schedule, steps, warmup_share=min(0.3, 1 / cfg.epochs))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [shape] * len(optimizer.param_groups))


def weight_average(model: nn.Module, half_life_epochs: float, steps_per_epoch: int) -> AveragedModel | None:
    """The exponential moving average of `model`'s weights and BatchNorm statistics, updated after
    every optimizer step, whose weight halves every `half_life_epochs` epochs (so the same setting
    means the same on 400 images and on 400,000); None when the half-life is 0."""
    if not half_life_epochs:
        return None
    decay = 0.5 ** (1 / (half_life_epochs * max(1, steps_per_epoch)))
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
