"""Image transforms: the resize policy and the albumentations training augmentation.

Every pipeline ends in a uint8 tensor of shape (3, size, size), whatever came in: a 55 px
ISIC 2024 tile or a 3000 px dermoscopy original (large JPEGs are already decoded at a reduced
scale by the image store, see `decode_image(max_side=...)`). Randomness comes only from
`reseed(transform, seed)`, given per sample, so a seeded epoch is replayable.
"""
from __future__ import annotations

import random
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from lesion_ml.config import AugmentConfig

NO_AUGMENT = AugmentConfig(flip=0, rotate90=0, affine=0, brightness_contrast=0, hue_saturation=0,
                           blur_noise=0, dropout=0, hair=0)


class HairArtefacts(A.ImageOnlyTransform):
    """Draw 1-`max_hairs` thin dark curves (quadratic Bezier strokes) across the image, as body
    hair crosses real dermoscopy and TBP tiles."""

    def __init__(self, max_hairs: int = 6, p: float = 0.5):
        super().__init__(p=p)
        self.max_hairs = max_hairs

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        rng = self.random_generator
        n = int(rng.integers(1, self.max_hairs + 1))
        pts = rng.uniform(0, 1, size=(n, 3, 2)) * np.array([w, h])
        t = np.linspace(0, 1, 24)[:, None]
        curves = [((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2).astype(np.int32) for p0, p1, p2 in pts]
        shade = rng.uniform(0.05, 0.35, size=n)
        width = rng.integers(1, max(2, min(h, w) // 48) + 1, size=n)
        return {"curves": curves, "shade": shade, "width": width}

    def apply(self, img: np.ndarray, curves: list, shade: np.ndarray, width: np.ndarray, **_: Any) -> np.ndarray:
        out = img.copy()
        for curve, s, wd in zip(curves, shade, width):
            colour = tuple(int(c) for c in (np.array([60, 45, 35]) * s * 2).clip(0, 255))
            cv2.polylines(out, [curve.reshape(-1, 1, 2)], False, colour, int(wd), lineType=cv2.LINE_AA)
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_hairs",)


def reseed(transform: A.BaseCompose, seed: int) -> None:
    """Seed every random choice `transform` makes next: one numpy and one Python generator, shared
    by the pipeline and all its transforms, which draw from them in turn.

    albumentations' own `set_random_seed` gives each transform a generator seeded alike, so
    transforms that draw alike draw the same: HorizontalFlip and VerticalFlip at p 0.5 then flip
    together or not at all, never one alone. It also costs about 0.3 ms per call (two generators
    per transform), where this costs a few microseconds: cheap enough to reseed every sample.
    """
    members = getattr(transform, "_lesion_members", None)
    if members is None:
        members = []
        stack = [transform]
        while stack:
            t = stack.pop()
            members.append(t)
            stack.extend(getattr(t, "transforms", []))
        transform._lesion_members = members
    rng, py_random = np.random.default_rng(seed), random.Random(seed)
    for t in members:
        t.random_generator, t.py_random = rng, py_random


def resize_steps(size: int, policy: str) -> list[A.BasicTransform]:
    """Bring any image to `size` x `size`: "squash" resizes (aspect not kept), "pad" fits the long
    side and pads the short one with black, "crop" fits the short side and takes the centre."""
    if policy == "squash":
        return [A.Resize(size, size, interpolation=cv2.INTER_AREA)]
    if policy == "pad":
        return [A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_AREA),
                A.PadIfNeeded(size, size, border_mode=cv2.BORDER_CONSTANT, fill=0)]
    if policy == "crop":
        return [A.SmallestMaxSize(max_size=size, interpolation=cv2.INTER_AREA), A.CenterCrop(size, size)]
    raise ValueError(f"unknown resize policy {policy!r}; allowed: squash, pad, crop")


def augment_steps(cfg: AugmentConfig) -> list[A.BasicTransform]:
    """The training augmentation families of `cfg` (those with a probability above 0)."""
    steps: list[A.BasicTransform] = []
    if cfg.flip:
        steps += [A.HorizontalFlip(p=cfg.flip), A.VerticalFlip(p=cfg.flip)]
    if cfg.rotate90:
        steps += [A.RandomRotate90(p=cfg.rotate90), A.Transpose(p=cfg.rotate90 / 2)]
    if cfg.affine:
        steps.append(A.Affine(scale=(0.85, 1.15), translate_percent=(-0.06, 0.06), rotate=(-45, 45),
                              border_mode=cv2.BORDER_REFLECT_101, p=cfg.affine))
    if cfg.brightness_contrast:
        steps.append(A.RandomBrightnessContrast(0.2, 0.2, p=cfg.brightness_contrast))
    if cfg.hue_saturation:
        steps.append(A.HueSaturationValue(8, 20, 10, p=cfg.hue_saturation))
    if cfg.blur_noise:
        steps.append(A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 5)),
                              A.GaussNoise(std_range=(0.02, 0.06))], p=cfg.blur_noise))
    if cfg.hair:
        steps.append(HairArtefacts(p=cfg.hair))
    if cfg.dropout:
        steps.append(A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15),
                                     hole_width_range=(0.05, 0.15), fill=0, p=cfg.dropout))
    return steps


def create_transforms(image_size: int, train: bool, augment: AugmentConfig | None = None,
                      resize: str = "squash") -> A.Compose:
    """Resize by `resize` policy, augment (when `train`) by `augment` (default: AugmentConfig()),
    then convert to a CHW uint8 tensor.

    Augmentation runs after the resize, on `image_size` pixels, so its cost does not grow with
    the original's size. The backbone's input scaling is not done here but by the network
    (`LesionNet.normalize`, on the device): a uint8 batch is a quarter of the float one to pass
    between loader workers and to copy to a GPU, and the CPU saves a float pass per image.
    """
    steps = resize_steps(image_size, resize)
    if train:
        steps += augment_steps(augment if augment is not None else AugmentConfig())
    steps.append(ToTensorV2())
    return A.Compose(steps)


def create_copy_transform(cfg: AugmentConfig, max_side: int) -> A.Compose:
    """uint8 augmentation (no normalisation) for the materialised minority set; an image larger
    than `max_side` pixels a side is first shrunk to it, keeping its aspect."""
    return A.Compose([ShrinkTo(max_side), *augment_steps(cfg)])


class ShrinkTo(A.ImageOnlyTransform):
    """Shrink (never enlarge) so that the longest side is at most `max_side`."""

    def __init__(self, max_side: int):
        super().__init__(p=1.0)
        self.max_side = max_side

    def apply(self, img: np.ndarray, **_: Any) -> np.ndarray:
        h, w = img.shape[:2]
        if max(h, w) <= self.max_side:
            return img
        scale = self.max_side / max(h, w)
        return cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_side",)
