from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from lesion_ml.config import AugmentConfig
from lesion_ml.data.images import decode_image
from lesion_ml.image.augment import HairArtefacts, create_copy_transform, create_transforms

EVERYTHING = AugmentConfig(flip=1, rotate90=1, affine=1, brightness_contrast=1, hue_saturation=1, blur_noise=1,
                           dropout=1, hair=1, zoom_out=1, frame=1)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    img = np.random.default_rng(seed).integers(90, 200, size=(h, w, 3), dtype=np.uint8)
    cv2.circle(img, (w // 2, h // 2), min(h, w) // 4, (80, 40, 30), -1)
    return img


@pytest.mark.parametrize("policy", ["squash", "pad", "crop"])
@pytest.mark.parametrize("shape", [(55, 55), (41, 70), (3000, 2000)])
@pytest.mark.parametrize("train", [True, False])
def test_every_pipeline_keeps_dtype_and_gives_the_model_size(policy, shape, train):
    t = create_transforms(64, train, augment=EVERYTHING, resize=policy)
    out = t(image=_image(*shape))["image"]
    assert out.shape == (3, 64, 64) and out.dtype == torch.uint8


def test_augmentation_really_changes_the_image_and_replays_for_a_seed():
    img = _image(60, 60)
    t = create_transforms(48, True, augment=EVERYTHING)
    plain = create_transforms(48, False)(image=img)["image"]
    t.set_random_seed(5)
    a = t(image=img)["image"]
    t.set_random_seed(5)
    b = t(image=img)["image"]
    t.set_random_seed(6)
    c = t(image=img)["image"]
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)


def test_eval_pipeline_is_deterministic_and_unaugmented():
    img = _image(60, 60)
    t = create_transforms(60, False)
    out = t(image=img)["image"]
    assert torch.equal(out, torch.from_numpy(img).permute(2, 0, 1))


def test_pad_policy_keeps_the_aspect_and_pads_with_black():
    img = np.full((30, 60, 3), 200, np.uint8)
    out = create_transforms(64, False, resize="pad")(image=img)["image"]
    assert out[:, 0, :].max() == 0 and out[:, 32, :].min() > 180  # top rows padding, middle rows image


def test_hair_artefacts_draw_dark_strokes():
    t = HairArtefacts(p=1.0)
    t.set_random_seed(1)
    img = np.full((96, 96, 3), 220, np.uint8)
    out = t(image=img)["image"]
    changed = (out != img).any(axis=2)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert 0.002 < changed.mean() < 0.5 and out[changed].mean() < 150


def test_copy_transform_shrinks_large_images_only():
    big = create_copy_transform(AugmentConfig(flip=0, rotate90=0, affine=0, brightness_contrast=0, hue_saturation=0,
                                              blur_noise=0, dropout=0), max_side=100)
    assert big(image=_image(400, 300))["image"].shape == (100, 75, 3)
    assert big(image=_image(50, 40))["image"].shape == (50, 40, 3)


def test_large_jpeg_is_decoded_at_a_reduced_scale_keeping_the_requested_side():
    ok, buf = cv2.imencode(".jpg", _image(3000, 4000))
    full = decode_image(buf.tobytes(), "x.jpg")
    small = decode_image(buf.tobytes(), "x.jpg", min_side=128)
    assert full.shape == (3000, 4000, 3)
    assert small.shape == (375, 500, 3) and min(small.shape[:2]) >= 128
    assert decode_image(buf.tobytes(), "x.jpg", min_side=1000).shape == (1500, 2000, 3)
    ok, png = cv2.imencode(".png", _image(300, 400))
    assert decode_image(png.tobytes(), "x.png", min_side=16).shape == (300, 400, 3)  # PNG: full size


def test_reseed_replays_and_the_flips_are_independent():
    import collections

    import albumentations as A

    from lesion_ml.image.augment import reseed

    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    t = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    seen = collections.Counter()
    for seed in range(400):
        reseed(t, seed)
        out = t(image=img)["image"]
        reseed(t, seed)
        assert np.array_equal(out, t(image=img)["image"])  # a seed replays
        seen[next(name for name, ref in (("none", img), ("h", img[:, ::-1]), ("v", img[::-1]), ("hv", img[::-1, ::-1]))
                  if np.array_equal(out, ref))] += 1
    # each flip on its own half the time: all four outcomes about equally often (albumentations'
    # set_random_seed would give only "none" and "hv")
    assert set(seen) == {"none", "h", "v", "hv"} and min(seen.values()) > 60


def test_reseed_reaches_nested_transforms_and_changes_the_training_augmentation():
    from lesion_ml.image.augment import reseed

    t = create_transforms(48, True, augment=EVERYTHING)
    img = _image(60, 60)
    outs = []
    for seed in (1, 2, 1):
        reseed(t, seed)
        outs.append(t(image=img)["image"])
    assert torch.equal(outs[0], outs[2]) and not torch.equal(outs[0], outs[1])
    blur = next(m for m in t._lesion_members if type(m).__name__ == "OneOf")
    assert all(c.random_generator is t.random_generator for c in blur.transforms)  # inside OneOf too


def test_fit_image_policies_and_the_eval_pipeline_equal_the_albumentations_one():
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    from lesion_ml.image.augment import Fit, fit_image

    img = _image(40, 80)
    pad = fit_image(img, 64, "pad")
    assert pad.shape == (64, 64, 3) and (pad[:16] == 0).all() and (pad[-16:] == 0).all() and pad[16:48].any()
    crop = fit_image(img, 64, "crop")  # short side to 64, centre 64 of the 128 columns
    assert crop.shape == (64, 64, 3)
    assert np.array_equal(crop, cv2.resize(img, (128, 64), interpolation=cv2.INTER_LINEAR)[:, 32:96])
    big = _image(400, 300)  # shrinking by 2 or more averages pixels
    assert np.array_equal(fit_image(big, 64, "squash"), cv2.resize(big, (64, 64), interpolation=cv2.INTER_AREA))
    small = _image(100, 90)  # less than 2: bilinear
    assert np.array_equal(fit_image(small, 64, "squash"), cv2.resize(small, (64, 64), interpolation=cv2.INTER_LINEAR))
    for policy in ("squash", "pad", "crop"):
        ref = A.Compose([Fit(64, policy), ToTensorV2()])(image=img)["image"]
        assert torch.equal(create_transforms(64, False, resize=policy)(image=img)["image"], ref)
    with pytest.raises(ValueError, match="allowed: squash, pad, crop"):
        fit_image(img, 64, "stretch")


def test_jpeg_size_reads_the_frame_header_of_baseline_progressive_and_exif_files():
    from lesion_ml.data.images import jpeg_size

    img = _image(37, 91)
    for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_OPTIMIZE, 1]):
        data = cv2.imencode(".jpg", img, params)[1].tobytes()
        assert jpeg_size(data) == (37, 91)
        exif = b"\xff\xe1" + (8).to_bytes(2, "big") + b"Exif\x00\x00"  # an APP1 segment before the frame
        assert jpeg_size(data[:2] + exif + data[2:]) == (37, 91)
        assert jpeg_size(data[:20]) is None  # cut before the frame header
    assert jpeg_size(cv2.imencode(".png", img)[1].tobytes()) is None
    assert jpeg_size(b"") is None and jpeg_size(b"\xff\xd8\x00\x00garbage") is None


def test_shades_of_grey_removes_a_colour_cast_and_is_applied_alike_everywhere():
    from lesion_ml.config import CnnModelConfig
    from lesion_ml.image.augment import NO_AUGMENT, model_transforms, shades_of_grey

    img = _image(80, 100)
    cast = np.clip(img.astype(float) * [1.25, 1.0, 0.7], 0, 255).astype(np.uint8)  # warm light, another camera
    a, b = shades_of_grey(img).astype(float), shades_of_grey(cast).astype(float)
    assert np.abs(a - b).mean() < 3 < np.abs(img.astype(float) - cast).mean()
    ratio = b.reshape(-1, 3).mean(0)
    assert ratio.max() / ratio.min() < 1.15  # channels balanced
    grey = np.repeat(img[..., :1], 3, axis=2)
    assert np.abs(shades_of_grey(grey).astype(int) - grey).max() <= 1  # a grey-lit image stays as it is
    black = np.zeros((8, 8, 3), np.uint8)
    assert np.array_equal(shades_of_grey(black), black)
    cfg = CnnModelConfig(image_size=48, colour_constancy="shades_of_grey", augment=NO_AUGMENT)
    ev = model_transforms(cfg, False)(image=cast)["image"]
    tr = model_transforms(cfg, True)(image=cast)["image"]
    plain = model_transforms(cfg.model_copy(update={"colour_constancy": "none"}), False)(image=cast)["image"]
    assert torch.equal(ev, tr) and not torch.equal(ev, plain)
    assert torch.equal(ev, create_transforms(48, False, constancy="shades_of_grey")(image=cast)["image"])
    with pytest.raises(ValueError, match="unknown colour constancy 'grey'"):
        create_transforms(48, False, constancy="grey")


def test_zoom_out_keeps_the_lesion_smaller_on_skin_and_the_frame_blackens_the_corners():
    from lesion_ml.image.augment import DermoscopeFrame, ZoomOut, reseed

    img = np.full((100, 100, 3), (200, 160, 150), np.uint8)  # skin
    cv2.circle(img, (50, 50), 30, (60, 30, 20), -1)  # the lesion
    dark = lambda a: (a.sum(axis=2) < 200).sum()  # noqa: E731
    for seed in range(5):
        z = A.Compose([ZoomOut(p=1)])
        reseed(z, seed)
        out = z(image=img)["image"]
        assert out.shape == img.shape and 0.2 * dark(img) < dark(out) < 0.85 * dark(img)
        assert tuple(out[0, 0]) == (200, 160, 150) or tuple(out[-1, -1]) == (200, 160, 150)  # skin around it
        f = A.Compose([DermoscopeFrame(p=1)])
        reseed(f, seed)
        framed = f(image=img)["image"]
        corners = [framed[0, 0], framed[0, -1], framed[-1, 0], framed[-1, -1]]
        assert sum(c.sum() == 0 for c in corners) >= 3  # corners outside the field of view
        assert np.array_equal(framed[50, 50], img[50, 50])  # the centre is untouched
