"""Explanations of an exported model's predictions.

- Image models: Grad-CAM (Selvaraju et al. 2017) on the backbone's last convolution: the
  gradient of the malignancy logit, averaged per channel, weights that layer's activations; the
  positive part, upsampled, is overlaid on the image as a heat map. One PNG per image and model
  shows the image as the model sees it and the overlay side by side, at least 256 px a side
  whatever the model's input size, with the image id, the model and its score written below.
- Metadata models (GBDT, stack): LightGBM's per-row feature contributions (TreeSHAP,
  `pred_contrib=True`) in log-odds, and the global gain importances.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn

from lesion_ml.data.images import ImageStore
from lesion_ml.image.augment import model_transforms, resize_steps
from lesion_ml.model.bundle import FinalModel

log = logging.getLogger(__name__)

DISPLAY_PX = 256  # the least side of each picture in an explanation PNG


def pooling_layer(net: nn.Module) -> nn.Module:
    """The backbone's global average pooling: its input is the last feature map (after the final
    block and activation), the layer Grad-CAM explains."""
    pools = [m for m in net.backbone.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    if not pools:
        raise ValueError("this backbone has no global average pooling layer for Grad-CAM")
    return pools[-1]


def grad_cam(net: nn.Module, image: torch.Tensor, meta: torch.Tensor | None = None) -> tuple[np.ndarray, float, bool]:
    """Grad-CAM map in [0, 1] at the input's resolution, the malignancy probability and whether
    any region pushed the logit up, for one image tensor of shape (3, H, W) from the
    evaluation transforms (uint8: the network scales it).

    When no region has positive evidence (every weighted sum is negative, so Grad-CAM's ReLU
    leaves nothing), the map shows where the evidence is least negative (min-max scaled) and
    the flag is False. The map has the backbone's last feature-map resolution (input / 32),
    upsampled. For a fold average (`FoldAverage`) the map is that of its mean logit: the sum of
    each member's weighted feature maps, each weighted by the gradient of the mean."""
    members = list(net.members) if hasattr(net, "members") else [net]
    store: list[torch.Tensor] = []

    def keep(_module, inputs):
        inputs[0].retain_grad()
        store.append(inputs[0])

    handles = [pooling_layer(m).register_forward_pre_hook(keep) for m in members]
    try:
        net.eval()
        with torch.enable_grad():
            x = image.unsqueeze(0)  # uint8: the network scales it
            logit = net(x, None if meta is None else meta.unsqueeze(0).float()).squeeze()
            net.zero_grad(set_to_none=True)
            logit.backward()
        maps = [(a.detach()[0], a.grad.detach()[0]) for a in store]
    finally:
        for handle in handles:
            handle.remove()
    raw = sum((grad.mean(dim=(1, 2))[:, None, None] * act).sum(0) for act, grad in maps).numpy().astype(np.float32)
    positive = bool(raw.max() > 0)
    cam = np.maximum(raw, 0) if positive else raw - raw.min()
    cam = cv2.resize(cam, (image.shape[2], image.shape[1]), interpolation=cv2.INTER_LINEAR)
    cam = cam / cam.max() if cam.max() > 0 else cam
    return cam.astype(np.float32), float(torch.sigmoid(logit.detach())), positive


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heat map (jet colour map, resized to the image) blended over `rgb`, as RGB uint8."""
    heat = cv2.resize(cam, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.uint8(255 * np.clip(heat, 0, 1)), cv2.COLORMAP_JET)[:, :, ::-1]
    return np.uint8(np.clip((1 - alpha) * rgb + alpha * colour, 0, 255))


def explanation_panel(view: np.ndarray, cam: np.ndarray, caption: list[str]) -> np.ndarray:
    """The image as the model sees it (left) and with the Grad-CAM heat map over it (right), side
    by side, with `caption` lines written below, as RGB uint8.

    `view` is the model's input geometry (resize policy applied) at display size; `cam` is the
    map at the model's input size and is stretched onto it, so both cover the same pixels."""
    gap, line = 8, 22
    h, w = view.shape[:2]
    canvas = np.full((h + gap + line * (len(caption) + 1), 2 * w + gap, 3), 255, np.uint8)
    canvas[:h, :w] = view
    canvas[:h, w + gap:] = overlay(view, cam)
    for i, text in enumerate(["image (model input)", "Grad-CAM: red = raised the malignancy score"]):
        cv2.putText(canvas, text, (4 + i * (w + gap), h + gap + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (90, 90, 90), 1,
                    cv2.LINE_AA)
    for k, text in enumerate(caption, 1):
        cv2.putText(canvas, text, (4, h + gap + 14 + k * line), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return canvas


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 image (H, W, 3) as PNG file contents."""
    ok, data = cv2.imencode(".png", rgb[:, :, ::-1])
    if not ok:
        raise ValueError(f"cannot encode an image of shape {rgb.shape} as PNG")
    return data.tobytes()


def explain_images(model: FinalModel, store: ImageStore, ids: list[str],
                   features: pd.DataFrame | None) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Grad-CAM overlays for every image model of the bundle (fusion models keep the image's
    metadata fixed), one image at a time: yields (row, panel) per image and model, the row
    describing it (its "heatmap" is the panel's file name, <image_id>_<component>.png) and the
    panel an RGB uint8 image (`explanation_panel`) for the caller to write (`png_bytes`)."""

    def has_meta(image_id: str) -> bool:
        return features is not None and image_id in features.index

    jobs = [(c, [i for i in ids if not model.cnns[c].n_meta or has_meta(i)])
            for c in model.manifest["components"] if c in model.cnns]
    lacking = [i for i in ids if not has_meta(i)]
    if model.fallback and model.needs_metadata and lacking:
        jobs.append((model.fallback["component"], lacking))  # what predict scores these images with
    for comp, comp_ids in jobs:
        c = model.cnns[comp]
        tf = model_transforms(c.config, False)
        side = max(DISPLAY_PX, c.config.image_size)  # readable whatever the model's input size
        view_tf = A.Compose(resize_steps(side, c.config.resize, c.config.colour_constancy))  # as the model sees it
        net = c.net.cpu().float()
        for image_id in comp_ids:
            meta = torch.tensor(features.loc[image_id].to_numpy(np.float32)) if c.n_meta else None
            rgb = store.get(image_id, side)
            cam, prob, positive = grad_cam(net, tf(image=rgb)["image"], meta)
            caption = [f"{image_id}   {comp}: malignancy score {prob:.3f}",
                       "heat map: where the evidence raised the score" if positive else
                       "no region raised the score: the map shows where it was least lowered"]
            peak = np.unravel_index(int(cam.argmax()), cam.shape)
            row = {"image_id": image_id, "component": comp, "probability": round(prob, 6),
                   "heatmap": f"{image_id}_{comp}.png", "positive_evidence": positive,  # False: the map is relative
                   "peak_row": round(peak[0] / cam.shape[0], 3), "peak_col": round(peak[1] / cam.shape[1], 3)}
            yield row, explanation_panel(view_tf(image=rgb)["image"], cam, caption)


@dataclass
class MetadataExplanation:
    """`explain_metadata`'s result: per image, the features that pushed its score most
    (image_id, rank, feature, value, contribution_logodds), and the model's gain importances
    (feature, gain, share), largest first."""

    contributions: pd.DataFrame
    importance: pd.DataFrame


def explain_metadata(model: FinalModel, features: pd.DataFrame, top: int = 5) -> MetadataExplanation | None:
    """Per image, the `top` metadata features that pushed its GBDT score most (TreeSHAP, log-odds),
    and the global gain importances; None when the bundle has no metadata model or no features."""
    boosters, cols = (model.gbdt, model.manifest["gbdt"]["columns"]) if model.gbdt else \
        (model.stack, (model.manifest.get("combiner") or {}).get("columns"))
    if not boosters or features is None or features.empty:
        return None
    missing = [c for c in cols if c not in features.columns]
    if missing:  # the stack also takes the image models' scores: the caller adds them as score_<model>
        raise ValueError(f"explaining the stack needs its input columns {missing}")
    X = features[cols].to_numpy(np.float64)  # noqa: N806
    contrib = np.mean([b.predict(X, pred_contrib=True) for b in boosters], axis=0)[:, :-1]
    rows = []
    for i, image_id in enumerate(features.index):
        order = np.argsort(-np.abs(contrib[i]))[:top]
        for rank, j in enumerate(order, 1):
            rows.append({"image_id": image_id, "rank": rank, "feature": cols[j], "value": X[i, j],
                         "contribution_logodds": round(float(contrib[i, j]), 5)})
    gain = np.mean([b.feature_importance("gain") for b in boosters], axis=0)
    imp = pd.DataFrame({"feature": cols, "gain": gain}).sort_values("gain", ascending=False)
    imp["share"] = (imp["gain"] / max(imp["gain"].sum(), 1e-12)).round(4)
    return MetadataExplanation(pd.DataFrame(rows), imp)


def importance_png(imp: pd.DataFrame, top: int = 20) -> bytes:
    """A bar chart of the `top` largest gain shares of `MetadataExplanation.importance`, as PNG
    file contents."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imp = imp.head(top)
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(imp) + 1))
    ax.barh(imp["feature"][::-1], imp["share"][::-1], color="#4c72b0")
    ax.set_xlabel("share of total gain")
    ax.set_title("metadata feature importance (LightGBM gain)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
