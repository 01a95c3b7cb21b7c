"""Tile rendering of the synthetic demo data set (lesion_ml.data.synthetic): one lesion drawn on
a patient's skin as an RGB tile, and the measurements taken on the drawn tile (colour in CIELAB,
area, perimeter, axes, asymmetry) that the tbp_lv_* metadata columns are derived from.

Every random draw comes from the generator passed in, in a fixed order, so a seeded generator
renders the same tile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

TILE_MM = 15.0  # an ISIC 2024 tile covers about 15 x 15 mm of skin


@dataclass(frozen=True)
class Lesion:
    """The drawn appearance of one lesion (lesion_ml.data.synthetic draws it per patient)."""

    malignant: bool
    diameter_mm: float
    aspect: float  # minor / major axis of the underlying ellipse
    irregularity: float  # amplitude of border harmonics
    asymmetry: float  # offset of the colour pattern from the centre, as a fraction of the radius
    n_colours: int
    contrast: float  # how much darker than the skin (L*)
    redness: float  # extra a* inside the lesion


_PALETTE = np.array([  # (dL, da, db) offsets of extra colours: dark brown, black, blue-grey, pink, tan
    [-18, 4, 6], [-32, 0, -2], [-14, -4, -14], [8, 16, 2], [10, 2, 10]], dtype=np.float32)


def render_tile(rng: np.random.Generator, les: Lesion, p, size: int) -> tuple[np.ndarray, dict]:
    """Draw one tile; return it (RGB uint8) and the measurements taken on it."""
    ppm = size / TILE_MM
    lab = np.empty((size, size, 3), np.float32)
    # smooth skin texture: white noise blurred over size/12 pixels, drawn at 1/8 of the resolution
    # (its amplitude scaled to match) and enlarged -- the same look for 1/64 of the random numbers
    lo = max(4, round(size / 8))
    noise = cv2.GaussianBlur(rng.standard_normal((lo, lo, 3), dtype=np.float32), (0, 0), lo / 12) * (lo / size)
    noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_LINEAR)
    lab[..., 0] = p.skin_L + 6 * noise[..., 0] * 3
    lab[..., 1] = p.skin_A + 3 * noise[..., 1] * 3
    lab[..., 2] = p.skin_B + 3 * noise[..., 2] * 3

    # border: an ellipse whose radius is modulated by a few random harmonics
    radius = min(les.diameter_mm / 2 * ppm, 0.46 * size)
    theta = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 8):
        r += les.irregularity * rng.normal(0, 1) / math.sqrt(k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rot = rng.uniform(0, np.pi)
    x = radius * r * np.cos(theta)
    y = radius * les.aspect * r * np.sin(theta)
    cx, cy = size / 2 + rng.normal(0, size * 0.03, 2)
    pts = np.stack([cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot)], 1)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    if mask.sum() < 4:
        cv2.circle(mask, (int(cx), int(cy)), 2, 1, -1)

    # lesion colour: a base colour plus off-centre blobs of other colours (asymmetry)
    inside = np.zeros((size, size, 3), np.float32)
    inside[...] = (p.skin_L - les.contrast, p.skin_A + les.redness + 3, p.skin_B + 7)
    for c in rng.choice(len(_PALETTE), size=les.n_colours - 1, replace=False):
        ang = rng.uniform(0, 2 * np.pi)
        off = les.asymmetry * radius * rng.uniform(0.5, 1.5)
        blob = np.zeros((size, size), np.uint8)
        cv2.ellipse(blob, (int(cx + off * math.cos(ang)), int(cy + off * math.sin(ang))),
                    (max(1, int(radius * rng.uniform(0.25, 0.6))), max(1, int(radius * rng.uniform(0.2, 0.5)))),
                    float(rng.uniform(0, 180)), 0, 360, 1, -1)
        soft = cv2.GaussianBlur(blob.astype(np.float32), (0, 0), max(0.8, radius / 8))
        inside += soft[..., None] * _PALETTE[c]
    inside += cv2.GaussianBlur(_noise(rng, (size, size, 3), 2.0), (0, 0), 1.0)
    edge = 1.5 if les.irregularity > 0.06 else 2.5
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), edge)[..., None]
    lab = lab * (1 - alpha) + inside * alpha
    lab[..., 0] = lab[..., 0].clip(0, 100)
    lab[..., 1:] = lab[..., 1:].clip(-100, 100)
    rgb = (cv2.cvtColor(lab, cv2.COLOR_LAB2RGB).clip(0, 1) * 255
           + _noise(rng, lab.shape, 2.0)).clip(0, 255)
    rgb = rgb.astype(np.uint8)
    return rgb, _measure(rgb, mask, ppm, les)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Zero-mean uniform pixel noise of standard deviation `std` (float32; a few times cheaper to
    draw than Gaussian noise, and indistinguishable once blurred or JPEG-encoded)."""
    u = rng.random(shape, dtype=np.float32)
    u -= 0.5
    u *= std * math.sqrt(12)
    return u


def _measure(rgb: np.ndarray, mask: np.ndarray, ppm: float, les: Lesion) -> dict:
    """What the metadata reports of the drawn lesion: CIELAB colour inside and around it, area,
    perimeter and axes in mm, asymmetry and the radial colour variation."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)
    ring = cv2.dilate(mask, np.ones((7, 7), np.uint8), iterations=2).astype(bool) & ~mask.astype(bool)
    if ring.sum() < 10:
        ring = ~mask.astype(bool)
    ins = lab[mask.astype(bool)]
    out = lab[ring]
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cnt = max(contours, key=cv2.contourArea)
    area = float(mask.sum()) / ppm**2
    perim = max(cv2.arcLength(cnt, True) / ppm, 2 * math.sqrt(math.pi * area))
    if len(cnt) >= 5:
        (_, _), (a1, a2), angle = cv2.fitEllipse(cnt)
    else:
        a1 = a2 = 2.0
        angle = 0.0
    major, minor = max(a1, a2) / ppm, min(a1, a2) / ppm
    asym = _point_asymmetry(mask)
    # colour of four concentric rings (by distance to the border): how much it varies radially
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    radial = 0.0
    if dist.max() > 0:
        inner = dist > 0
        ring_of = np.minimum((dist[inner] / dist.max() * 4 - 1e-9).astype(np.int64), 3)
        count = np.bincount(ring_of, minlength=4)
        colour = lab[inner]
        means = np.stack([np.bincount(ring_of, colour[:, c], minlength=4) for c in range(3)], 1)
        means = means[count > 0] / count[count > 0, None]
        radial = float(np.std(means, axis=0).max()) if len(means) > 1 else 0.0
    return {
        "L": ins[:, 0].mean(), "A": ins[:, 1].mean(), "B": ins[:, 2].mean(),
        "Lext": out[:, 0].mean(), "Aext": out[:, 1].mean(), "Bext": out[:, 2].mean(),
        "stdL": ins[:, 0].std(), "stdLExt": out[:, 0].std(),
        "color_std": float(np.sqrt(ins[:, 1].var() + ins[:, 2].var())),
        "area": area, "perimeter": perim, "major": major, "minor": minor, "angle": angle,
        "asym": asym + les.asymmetry * 0.4, "radial": radial,
    }


def _point_asymmetry(mask: np.ndarray) -> float:
    """1 - IoU of the mask and its 180-degree rotation about the lesion's centroid (0 = symmetric)."""
    mom = cv2.moments(mask, binaryImage=True)
    if mom["m00"] == 0:
        return 0.0
    h, w = mask.shape
    shift = np.float32([[1, 0, w / 2 - mom["m10"] / mom["m00"]], [0, 1, h / 2 - mom["m01"] / mom["m00"]]])
    centred = cv2.warpAffine(mask, shift, (w, h), flags=cv2.INTER_NEAREST)
    rotated = np.flip(centred, axis=(0, 1))
    return 1 - float((centred & rotated).sum()) / max(1.0, float((centred | rotated).sum()))
