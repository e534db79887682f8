"""The mask operations equal scipy.ndimage's exactly, on random masks of every shape."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from braintl.data.masks import box_max, box_min, fill_holes

SHAPES = [(1, 1), (1, 9), (2, 128), (3, 5), (7, 40), (37, 29), (128, 97), (300, 340)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_box_filters_equal_scipy(shape, mode):
    rng = np.random.default_rng(sum(shape))
    scipy_mode = {"mode": mode, "cval": False} if mode == "constant" else {"mode": mode}
    for _ in range(10):
        mask = rng.random(shape) < rng.uniform(0.05, 0.95)
        for size in (1, 3, 5, 7):
            assert np.array_equal(
                box_min(mask, size, mode), ndimage.minimum_filter(mask, size, **scipy_mode)
            )
            assert np.array_equal(
                box_max(mask, size, mode), ndimage.maximum_filter(mask, size, **scipy_mode)
            )
            assert box_min(mask, size, mode).dtype == bool


@pytest.mark.parametrize("shape", SHAPES)
def test_fill_holes_equals_scipy(shape):
    rng = np.random.default_rng(sum(shape))
    masks = [np.zeros(shape, bool), np.ones(shape, bool)]
    masks += [rng.random(shape) < rng.uniform(0.2, 0.8) for _ in range(30)]
    for mask in masks:
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_a_ring_is_filled_and_a_gap_to_the_edge_is_not():
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[3:6, 3:6] = False
    assert fill_holes(ring)[4, 4]
    open_ring = ring.copy()
    open_ring[2:5, 4] = False  # a channel from the hole to the outside
    open_ring[0:3, 4] = False
    assert not fill_holes(open_ring)[4, 4]


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros(4, bool)])
def test_box_filters_refuse_what_they_do_not_compute(bad):
    with pytest.raises(ValueError, match="2-D bool mask"):
        box_min(bad, 3)
    with pytest.raises(ValueError, match="odd size"):
        box_max(np.zeros((4, 4), bool), 4)
