"""Running an image model: the device, the forward pass on a batch (channels-last, bf16 on
CUDA), test-time augmentation over the 8 dihedral views, and prediction over a loader."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lesion_ml.image.net import LesionNet

__all__ = ["dihedral", "forward_logits", "forward_prob", "predict", "select_device", "to_device", "use_threads"]


def select_device(name: str) -> torch.device:
    """"auto" picks CUDA when present, else CPU; "cuda" without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train_cnn.device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to `device` in channels-last layout (NHWC), which oneDNN on CPU and the tensor
    cores under bf16 autocast on CUDA both run faster than NCHW; `forward_logits` feeds it NHWC."""
    return model.to(device).to(memory_format=torch.channels_last)


def forward_logits(model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
    x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    meta = batch.get("meta")
    meta = None if meta is None else meta.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(x, meta) if isinstance(model, LesionNet) else model(x)
    return out.squeeze(1).float()


@torch.no_grad()
def dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips and quarter turns of an image batch (lesions have no orientation)."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(2, 3))
        out += [r, torch.flip(r, dims=(3,))]
    return out


def forward_prob(model: nn.Module, batch: dict, device: torch.device, tta: bool = False) -> torch.Tensor:
    """Malignancy probabilities of a batch; with `tta` the mean over its 8 dihedral views."""
    if not tta:
        return torch.sigmoid(forward_logits(model, batch, device))
    return torch.stack([torch.sigmoid(forward_logits(model, {**batch, "image": v}, device))
                        for v in dihedral(batch["image"])]).mean(0)


def predict(model: nn.Module, loader: DataLoader, device: torch.device, tta: bool = False) -> np.ndarray:
    """Malignancy probabilities for every sample of `loader`, in order (see `forward_prob`)."""
    model.eval()
    with torch.no_grad():
        out = [forward_prob(model, batch, device, tta).cpu().numpy() for batch in loader]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def use_threads(n: int) -> None:
    """torch's CPU threads in this process (params.yaml train_cnn.threads): n > 0 sets them, 0
    keeps torch's default. Called where the work runs, so a Dask worker gets it too."""
    if n:
        torch.set_num_threads(n)
