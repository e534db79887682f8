"""The synthetic phantoms: deterministic, distinct, real image files on any storage URL."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from braintl.data.duplicates import DEFAULT_NEAR_DISTANCE, near_pairs, perceptual_hash
from braintl.data.phantoms import make_phantom, phantom_rng, write_phantom_dataset
from braintl.data.preprocess import brain_crop_box


def test_phantom_is_rgb_uint8_grey_and_seeded():
    a = make_phantom(np.random.default_rng(3), tumor=True, size=96)
    b = make_phantom(np.random.default_rng(3), tumor=True, size=96)
    c = make_phantom(np.random.default_rng(4), tumor=True, size=96)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_phantom_has_dark_background_and_bright_head():
    img = make_phantom(np.random.default_rng(0), tumor=False, size=128)[..., 0]
    assert np.median(img[:4, :4]) < 30  # corners are background...
    assert img.max() > 120  # ...the skull is bright


def test_tumor_is_a_bright_compact_blob_inside_the_head():
    # One seed gives the same scan with and without the tumor: the difference is the tumor.
    for seed in range(4):
        yes = make_phantom(np.random.default_rng(seed), tumor=True, size=128)
        no = make_phantom(np.random.default_rng(seed), tumor=False, size=128)
        diff = yes[..., 0].astype(int) - no[..., 0].astype(int)
        brighter = diff > 20
        assert 0.005 < brighter.mean() < 0.15
        ys, xs = np.nonzero(brighter)
        y0, y1, x0, x1 = brain_crop_box(no)
        assert y0 <= ys.min() and ys.max() < y1 and x0 <= xs.min() and xs.max() < x1


def test_phantoms_are_not_perceptual_duplicates_of_each_other():
    """Different phantoms must stay well above the near-duplicate threshold: the detector the
    manifest runs finds no pair even with a margin of 4 bits."""
    phantoms = [
        make_phantom(phantom_rng(0, label, i), label == "yes", size=128)
        for label in ("yes", "no")
        for i in range(20)
    ]
    hashes = [perceptual_hash(p) for p in phantoms]
    assert len(near_pairs(hashes, DEFAULT_NEAR_DISTANCE + 4)) == 0
    assert len(near_pairs(hashes[:2] + hashes[:1], 0)) == 1  # an identical one is found


def test_written_dataset_is_real_pngs_and_deterministic(tmp_path):
    counts = {"yes": 3, "no": 2}
    url = write_phantom_dataset(tmp_path / "a", counts, size=64, seed=5)
    write_phantom_dataset(tmp_path / "b", counts, size=64, seed=5)
    write_phantom_dataset(tmp_path / "c", counts, size=64, seed=6)
    assert url == str(tmp_path / "a")
    for label, n in counts.items():
        files = sorted((tmp_path / "a" / label).iterdir())
        assert len(files) == n
        for f in files:
            with Image.open(f) as im:
                assert im.format == "PNG" and im.size == (64, 64) and im.mode == "RGB"
            twin = tmp_path / "b" / label / f.name
            other = tmp_path / "c" / label / f.name
            assert f.read_bytes() == twin.read_bytes()
            assert f.read_bytes() != other.read_bytes()


def test_labels_draw_different_heads(tmp_path):
    # A yes and a no phantom with the same index must not be the same head (a label conflict).
    write_phantom_dataset(tmp_path, {"yes": 1, "no": 1}, size=64)
    yes = np.asarray(Image.open(tmp_path / "yes" / "phantom_yes_0000.png"))
    no = np.asarray(Image.open(tmp_path / "no" / "phantom_no_0000.png"))
    assert len(near_pairs([perceptual_hash(yes), perceptual_hash(no)], DEFAULT_NEAR_DISTANCE)) == 0


def test_jpeg_format_and_bad_arguments(tmp_path):
    write_phantom_dataset(tmp_path, {"no": 1}, size=64, fmt="jpg")
    data = (tmp_path / "no" / "phantom_no_0000.jpg").read_bytes()
    assert Image.open(io.BytesIO(data)).format == "JPEG"
    with pytest.raises(ValueError, match="unknown phantom labels"):
        write_phantom_dataset(tmp_path, {"maybe": 1})
    with pytest.raises(ValueError, match="unknown image format"):
        write_phantom_dataset(tmp_path, {"yes": 1}, fmt="xyz")
    with pytest.raises(ValueError, match="too small"):
        make_phantom(np.random.default_rng(0), True, size=8)
