"""Where the brain is in a scan: the bounding box of the largest bright region."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

DEFAULT_THRESHOLD = 30


def brain_bbox(rgb: np.ndarray, threshold: int = DEFAULT_THRESHOLD) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the largest connected region brighter than ``threshold``.

    Scans sit on a black background with text and markers around them; the head is the
    largest bright region. Falls back to the whole image when nothing is bright enough.
    """
    grey = rgb.mean(axis=2) if rgb.ndim == 3 else rgb
    mask = grey > threshold
    labels, count = ndimage.label(mask)
    if count == 0:
        return 0, rgb.shape[0], 0, rgb.shape[1]
    sizes = np.bincount(labels.ravel())[1:]
    ys, xs = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    return ys.start, ys.stop, xs.start, xs.stop
