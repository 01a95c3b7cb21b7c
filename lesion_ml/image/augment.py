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
import torch
from albumentations.pytorch import ToTensorV2

from lesion_ml.config import AugmentConfig, CnnModelConfig

NO_AUGMENT = AugmentConfig(flip=0, rotate90=0, affine=0, brightness_contrast=0, hue_saturation=0,
                           blur_noise=0, dropout=0, hair=0, zoom_out=0, frame=0)


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


class ZoomOut(A.ImageOnlyTransform):
    """Shrink the image by a factor in `scale` and place it at a random position on a canvas of
    the colour of its border (the median of its outermost pixels, nearly always skin): the same
    lesion framed from further away, as another dermatoscope or photographer would frame it."""

    def __init__(self, scale: tuple[float, float] = (0.5, 0.9), p: float = 0.5):
        super().__init__(p=p)
        self.scale = scale

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        rng = self.random_generator
        return {"s": float(rng.uniform(*self.scale)), "dx": float(rng.uniform()), "dy": float(rng.uniform())}

    def apply(self, img: np.ndarray, s: float, dx: float, dy: float, **_: Any) -> np.ndarray:
        h, w = img.shape[:2]
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        ring = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        out = np.empty_like(img)
        out[:] = np.median(ring, axis=0).astype(img.dtype)
        top, left = int(dy * (h - nh)), int(dx * (w - nw))
        out[top:top + nh, left:left + nw] = small
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale",)


class DermoscopeFrame(A.ImageOnlyTransform):
    """Black outside a circle of radius `radius` x the image side, centred near the middle: the
    round field of view that contact dermatoscopes leave in the corners (or all around) of an image."""

    def __init__(self, radius: tuple[float, float] = (0.42, 0.65), p: float = 0.5):
        super().__init__(p=p)
        self.radius = radius

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        rng = self.random_generator
        return {"r": float(rng.uniform(*self.radius)), "shift": rng.uniform(-0.05, 0.05, size=2)}

    def apply(self, img: np.ndarray, r: float, shift: np.ndarray, **_: Any) -> np.ndarray:
        h, w = img.shape[:2]
        side = min(h, w)
        mask = np.zeros((h, w), np.uint8)
        centre = (round(w / 2 + shift[0] * side), round(h / 2 + shift[1] * side))
        cv2.circle(mask, centre, round(r * side), 255, -1, lineType=cv2.LINE_AA)
        return (img.astype(np.uint16) * mask[..., None] // 255).astype(img.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("radius",)


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


RESIZE_POLICIES = ("squash", "pad", "crop")
COLOUR_CONSTANCY = ("none", "shades_of_grey")


def shades_of_grey(img: np.ndarray, power: int = 6) -> np.ndarray:
    """Colour constancy by Shades of Grey (Finlayson and Trezzi 2004; Barata et al. 2015 for
    dermoscopy): estimate the illuminant as the per-channel Minkowski `power`-norm mean of the
    image and scale the channels so that it becomes grey. Different dermatoscopes and lighting
    then give images of similar colour balance; only the ratio between the channels changes, so a
    grey-lit image is left as it is and black padding does not move the estimate."""
    x = img.astype(np.float32)
    illuminant = np.power(np.mean(np.power(x, power), axis=(0, 1)), 1.0 / power)
    norm = float(np.sqrt((illuminant ** 2).sum()))
    if norm < 1e-6:  # an all-black image has no illuminant to correct
        return img
    gain = norm / (np.sqrt(3.0) * np.maximum(illuminant, 1e-6))
    return np.clip(x * gain + 0.5, 0, 255).astype(np.uint8)


def _constancy(img: np.ndarray, method: str) -> np.ndarray:
    if method == "none":
        return img
    if method == "shades_of_grey":
        return shades_of_grey(img)
    raise ValueError(f"unknown colour constancy {method!r}; allowed: {', '.join(COLOUR_CONSTANCY)}")


def fit_image(img: np.ndarray, size: int, policy: str) -> np.ndarray:
    """`img` brought to `size` x `size` by `policy` (see `resize_steps`).

    Pixels are averaged (INTER_AREA) where the image shrinks to half or less; otherwise, as for
    a 55-140 px ISIC 2024 tile going to 64 px, bilinear interpolation does it at a tenth of the
    cost (OpenCV's area resampling is slow at fractional factors). Large JPEGs arrive already
    shrunk in the DCT to within a factor of 2 of the model's size (`decode_image(min_side=)`).
    """
    h, w = img.shape[:2]
    if policy == "squash":
        return _resize(img, size, size)
    if policy == "pad":
        scale = size / max(h, w)
        nh, nw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
        out = _resize(img, nh, nw)
        top, left = (size - nh) // 2, (size - nw) // 2
        return cv2.copyMakeBorder(out, top, size - nh - top, left, size - nw - left, cv2.BORDER_CONSTANT, value=0)
    if policy == "crop":
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        out = _resize(img, nh, nw)
        top, left = (nh - size) // 2, (nw - size) // 2
        return out[top:top + size, left:left + size]
    raise ValueError(f"unknown resize policy {policy!r}; allowed: {', '.join(RESIZE_POLICIES)}")


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if img.shape[:2] == (h, w):
        return img
    shrink = min(img.shape[0] / h, img.shape[1] / w)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink >= 2 else cv2.INTER_LINEAR)


class Fit(A.ImageOnlyTransform):
    """The resize policy, then the colour constancy, as one albumentations step (`fit_image`,
    `shades_of_grey`). Constancy runs on the model-size image: its cost does not grow with the
    original's size, and training, prediction and explanation all see it the same way."""

    def __init__(self, size: int, policy: str = "squash", constancy: str = "none"):
        super().__init__(p=1.0)
        if policy not in RESIZE_POLICIES:
            raise ValueError(f"unknown resize policy {policy!r}; allowed: {', '.join(RESIZE_POLICIES)}")
        if constancy not in COLOUR_CONSTANCY:
            raise ValueError(f"unknown colour constancy {constancy!r}; allowed: {', '.join(COLOUR_CONSTANCY)}")
        self.size, self.policy, self.constancy = size, policy, constancy

    def apply(self, img: np.ndarray, **_: Any) -> np.ndarray:
        return _constancy(fit_image(img, self.size, self.policy), self.constancy)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "policy", "constancy")


class EvalTransform:
    """The evaluation pipeline (resize policy and colour constancy, then a CHW uint8 tensor) called
    like an albumentations Compose (``t(image=img)["image"]``) without its per-call bookkeeping,
    which costs more than the resize of a small tile."""

    def __init__(self, size: int, policy: str = "squash", constancy: str = "none"):
        self.fit = Fit(size, policy, constancy)

    def __call__(self, *, image: np.ndarray) -> dict[str, torch.Tensor]:
        return {"image": torch.from_numpy(self.fit.apply(image).transpose(2, 0, 1))}



def output_shape(transform: Any) -> tuple[int, int, int] | None:
    """The [C, H, W] shape of every image `transform` gives: 3 x size x size for the pipelines of
    `create_transforms` (the resize comes first, the augmentations keep the size); None for others."""
    fit = transform.fit if isinstance(transform, EvalTransform) else next(iter(getattr(transform, "transforms", [])), None)
    return (3, fit.size, fit.size) if isinstance(fit, Fit) else None

def resize_steps(size: int, policy: str, constancy: str = "none") -> list[A.BasicTransform]:
    """Bring any image to `size` x `size`: "squash" resizes (aspect not kept), "pad" fits the long
    side and pads the short one with black, "crop" fits the short side and takes the centre; then
    apply the colour constancy (`COLOUR_CONSTANCY`)."""
    return [Fit(size, policy, constancy)]


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
    if cfg.zoom_out:
        steps.append(ZoomOut(p=cfg.zoom_out))
    if cfg.brightness_contrast:
        steps.append(A.RandomBrightnessContrast(0.2, 0.2, p=cfg.brightness_contrast))
    if cfg.hue_saturation:
        steps.append(A.HueSaturationValue(8, 20, 10, p=cfg.hue_saturation))
    if cfg.blur_noise:
        steps.append(A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 5)),
                              A.GaussNoise(std_range=(0.02, 0.06))], p=cfg.blur_noise))
    if cfg.hair:
        steps.append(HairArtefacts(p=cfg.hair))
    if cfg.frame:
        steps.append(DermoscopeFrame(p=cfg.frame))
    if cfg.dropout:
        steps.append(A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15),
                                     hole_width_range=(0.05, 0.15), fill=0, p=cfg.dropout))
    return steps


def model_transforms(cfg: CnnModelConfig, train: bool) -> A.Compose | EvalTransform:
    """The input pipeline of an image model, from its config: the one place training, prediction,
    validation and explanation get it from."""
    return create_transforms(cfg.image_size, train, cfg.augment if train else None, cfg.resize, cfg.colour_constancy)


def create_transforms(image_size: int, train: bool, augment: AugmentConfig | None = None,
                      resize: str = "squash", constancy: str = "none") -> A.Compose | EvalTransform:
    """Resize by `resize` policy, correct the colour by `constancy`, augment (when `train`) by `augment` (default: AugmentConfig()),
    then convert to a CHW uint8 tensor.

    Augmentation runs after the resize, on `image_size` pixels, so its cost does not grow with
    the original's size. The backbone's input scaling is not done here but by the network
    (`LesionNet.normalize`, on the device): a uint8 batch is a quarter of the float one to pass
    between loader workers and to copy to a GPU, and the CPU saves a float pass per image.
    """
    if not train:
        return EvalTransform(image_size, resize, constancy)
    steps = resize_steps(image_size, resize, constancy) + augment_steps(augment if augment is not None else AugmentConfig())
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
