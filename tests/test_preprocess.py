"""Preprocessing: shape and dtype, aspect ratio kept, brain crop on phantoms and real scans."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from scipy import ndimage

from braintl.data.phantoms import make_phantom
from braintl.data.preprocess import (
    PreprocessConfig,
    _largest_filled,
    brain_crop_box,
    pad_to_square,
    preprocess,
)

DATA_DIR = os.environ.get("BRAINTL_DATA_DIR")


def test_config_defaults_frozen_and_json():
    config = PreprocessConfig()
    assert (config.image_size, config.crop, config.crop_threshold) == (224, False, 45)
    assert json.loads(json.dumps(config.model_dump())) == config.model_dump()
    assert hash(config) == hash(PreprocessConfig())
    with pytest.raises(ValidationError):
        config.image_size = 64
    with pytest.raises(ValidationError):
        PreprocessConfig(image_size=8)
    with pytest.raises(ValidationError):
        PreprocessConfig(unknown=1)


@pytest.mark.parametrize("shape", [(50, 50), (37, 120), (300, 41), (1000, 800)])
def test_output_is_uint8_channels_first_square(shape):
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    for crop in (False, True):
        out = preprocess(rgb, PreprocessConfig(image_size=32, crop=crop))
        assert out.shape == (3, 32, 32) and out.dtype == np.uint8
        assert out.flags.c_contiguous


def test_deterministic():
    rgb = make_phantom(np.random.default_rng(1), True, size=100)
    config = PreprocessConfig(image_size=48, crop=True)
    assert preprocess(rgb, config).tobytes() == preprocess(rgb.copy(), config).tobytes()


def test_rejects_non_rgb_uint8():
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess(np.zeros((10, 10), np.uint8), PreprocessConfig())
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess(np.zeros((10, 10, 3), np.float32), PreprocessConfig())


def test_non_square_is_padded_with_black_not_stretched():
    wide = np.full((100, 200, 3), 255, dtype=np.uint8)
    out = preprocess(wide, PreprocessConfig(image_size=64))[0]
    assert np.all(out[:14] == 0) and np.all(out[-14:] == 0)  # black bands top and bottom
    assert np.all(out[18:46] == 255)  # the image, full width, in the middle half
    # A disc stays a disc: equal extent across and down.
    yy, xx = np.mgrid[0:90, 0:300]
    disc = np.where((yy - 45) ** 2 + (xx - 200) ** 2 < 40**2, 255, 0).astype(np.uint8)
    out = preprocess(np.repeat(disc[..., None], 3, 2), PreprocessConfig(image_size=150))[0] > 127
    rows, cols = np.nonzero(out.any(axis=1))[0], np.nonzero(out.any(axis=0))[0]
    assert abs(len(rows) - len(cols)) <= 1


def test_pad_to_square_centres():
    out = pad_to_square(np.ones((3, 6, 3), dtype=np.uint8))
    assert out.shape == (6, 6, 3)
    assert out[:, :, 0].sum(axis=1).tolist() == [0, 6, 6, 6, 0, 0]


def test_crop_finds_the_head_in_a_phantom_and_ignores_specks():
    head = make_phantom(np.random.default_rng(2), True, size=160)
    canvas = np.zeros((300, 400, 3), dtype=np.uint8)
    canvas[100:260, 200:360] = head
    canvas[10:16, 10:40] = 255  # a text label far from the head
    y0, y1, x0, x1 = brain_crop_box(canvas)
    ys, xs = np.nonzero(head[..., 0] > 100)  # the skull and other bright head pixels
    assert 100 <= y0 <= 100 + ys.min() and 100 + ys.max() < y1 <= 260
    assert 200 <= x0 <= 200 + xs.min() and 200 + xs.max() < x1 <= 360
    cropped = preprocess(canvas, PreprocessConfig(image_size=64, crop=True))
    full = preprocess(canvas, PreprocessConfig(image_size=64))
    assert (cropped > 45).mean() > 2 * (full > 45).mean()  # the head fills the frame


def test_the_largest_filled_region_is_the_one_every_fill_would_pick():
    """The pruned search equals filling every region with scipy (ties: the first region)."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        mask = rng.random(tuple(rng.integers(1, 40, 2))) < rng.uniform(0.2, 0.8)
        labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        if count:
            boxes = ndimage.find_objects(labels)
            fill = ndimage.binary_fill_holes
            areas = [fill(labels[b] == i + 1).sum() for i, b in enumerate(boxes)]
            assert _largest_filled(labels) == boxes[int(np.argmax(areas))]


def test_crop_falls_back_to_the_whole_image_when_nothing_is_bright():
    dark = np.full((40, 70, 3), 20, dtype=np.uint8)
    assert brain_crop_box(dark) == (0, 40, 0, 70)
    assert np.all(preprocess(dark, PreprocessConfig(image_size=16, crop=True))[:, 5:11] == 20)


def _real_scans() -> list[Path]:
    root = Path(DATA_DIR) / "brain_mri"
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    # A spread of sizes and formats: every 25th file plus the largest and a PNG.
    picks = files[::25] + [max(files, key=lambda p: p.stat().st_size)]
    return picks + [next(p for p in files if p.suffix.lower() == ".png")]


@pytest.mark.real_data
@pytest.mark.skipif(not DATA_DIR, reason="BRAINTL_DATA_DIR is not set: no real MRI scans here")
def test_crop_finds_the_brain_in_real_scans():
    for path in _real_scans():
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        y0, y1, x0, x1 = brain_crop_box(rgb)
        h, w = rgb.shape[:2]
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w, path
        assert (y1 - y0) * (x1 - x0) > 0.2 * h * w, path  # a head, not a speck
        bright = rgb.mean(axis=2) > 45
        inside = bright[y0:y1, x0:x1].sum()
        assert inside > 0.75 * bright.sum(), f"{path}: the crop misses much of the head"
        out = preprocess(rgb, PreprocessConfig(image_size=64, crop=True))
        assert out.shape == (3, 64, 64) and out.dtype == np.uint8
