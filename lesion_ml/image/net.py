"""The image model and the image + metadata fusion model, one class.

`LesionNet(backbone)` is a registry backbone whose classifier is replaced by a one-logit head.
With `n_meta > 0` it is the fusion network of the SIIM-ISIC 2020 winners: the backbone's pooled
features are concatenated with an MLP embedding of the metadata features, and one linear
layer maps both to the malignancy logit. The metadata standardisation (fitted on the training
rows) lives in buffers, so a saved state dict carries everything needed to predict.
"""
from __future__ import annotations

import torch
from torch import nn

from lesion_ml.image.backbones import backbone_spec, create_backbone


class LesionNet(nn.Module):
    """Args:
        backbone: a registry name (lesion_ml.image.backbones.BACKBONES).
        pretrained: "true" | "auto" | "false" (never downloads).
        n_meta: number of metadata features; 0 builds the image-only model.
        hidden: width of the metadata MLP.
        dropout: dropout before the final layer (fusion) and inside the MLP.
    """

    def __init__(self, backbone: str, pretrained: str = "false", n_meta: int = 0, hidden: int = 64,
                 dropout: float = 0.2):
        super().__init__()
        spec = backbone_spec(backbone)
        net = create_backbone(backbone, pretrained)
        n_features = getattr(net, spec.head).in_features
        setattr(net, spec.head, nn.Identity())
        self.backbone = net
        # the backbone's input scaling, applied on the device to uint8 batches (not saved: the
        # backbone's name fixes it)
        self.register_buffer("pixel_mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255, persistent=False)
        self.n_meta = n_meta
        if n_meta:
            self.register_buffer("meta_mean", torch.zeros(n_meta))
            self.register_buffer("meta_std", torch.ones(n_meta))
            self.meta = nn.Sequential(nn.Linear(n_meta, hidden), nn.BatchNorm1d(hidden), nn.SiLU(), nn.Dropout(dropout),
                                      nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.SiLU())
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(n_features + hidden, 1))
        else:
            self.head = nn.Linear(n_features, 1)

    def set_meta_scaling(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise metadata with these training-row statistics (std 0 becomes 1)."""
        self.meta_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.meta_std.copy_(torch.where(torch.as_tensor(std) > 0, torch.as_tensor(std, dtype=torch.float32), 1.0))

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """A uint8 image batch (N, 3, H, W) as the backbone expects it: (x - mean) / std with its
        ImageNet (or Lite0) statistics, in float32. A float batch is taken as already scaled."""
        if image.dtype != torch.uint8:
            return image
        return (image.float() - self.pixel_mean) / self.pixel_std

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Malignancy logits (N, 1) for uint8 images as the loaders give them (or already scaled
        float images) and, for the fusion model, their metadata rows (N, n_meta)."""
        features = self.backbone(self.normalize(image))
        if self.n_meta:
            if meta is None:
                raise ValueError(f"this fusion model needs {self.n_meta} metadata features per image")
            m = torch.nan_to_num((meta.float() - self.meta_mean) / self.meta_std).clamp(-8, 8)
            features = torch.cat([features.float(), self.meta(m).float()], dim=1)
        return self.head(features)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def freeze_backbone(self, frozen: bool) -> None:
        """Stop (or restart) training the backbone; a frozen backbone also keeps its BatchNorm
        statistics (call after `train()`)."""
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.backbone.eval()


class FoldAverage(nn.Module):
    """The mean logit of several image-only LesionNets of one architecture: the cross-validation
    fold models exported as one model (params.yaml `final.image_models: fold_average`)."""

    def __init__(self, members: list[LesionNet]):
        super().__init__()
        if not members or any(m.n_meta for m in members):
            raise ValueError("a fold average needs at least one image-only model")
        self.members = nn.ModuleList(members)
        self.n_meta = 0

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """The members' mean malignancy logit (N, 1)."""
        return torch.stack([m(image) for m in self.members]).mean(0)
