"""A head scan's transform-invariant signature: what offline augmentation cannot change.

Why: augmented copies (the seed's data set) are flipped, rotated, shifted, zoomed and
brightened, and the DCT hashes in ``duplicates`` see most of them as different scans. The
signature describes the head in polar coordinates about its own centre, with radii in units of
its own size and intensities divided by its mean, so a shift, zoom or brightness change leaves
it unchanged. Of that polar image it keeps what no rotation or mirror can change: each ring's
angular Fourier magnitudes, and the real part of neighbouring rings' cross-spectrum (a rotation
turns both rings' phases alike; a mirror conjugates both).

The head is the largest region brighter than half the Otsu threshold (relative, so brightness
does not move its edge) without the flat fill that augmentation paints into the corners it
rotates in. On ../shared/data/brain_mri_augmented this finds 96% of the copies at
:data:`COPY_DISTANCE` with no two scans joined; see benchmarks/bench_dedup.py.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from braintl.data.masks import box_max, box_min, fill_holes

ANALYSIS_SIDE = 128  # px: coarse enough to ignore JPEG noise, fine enough to tell scans apart
RINGS, ANGLES, HARMONICS = 32, 64, 12
SIZE = RINGS * HARMONICS + (RINGS - 1) * HARMONICS
# L2 distances. On brain_mri_augmented copies chain together below 1.0 and the first two
# different scans meet at 1.03; on brain_mri true copies lie within 0.95 and different scans
# (the DCT hash's 54-bit pairs) start at 1.56, so 1.3 marks a hash pair as contradicted.
COPY_DISTANCE = 1.0
CONTRADICTS = 1.3
_FLAT_STD = 2.0  # grey levels: a region this flat and touching the border is fill, not head


def signature(rgb: np.ndarray) -> np.ndarray:
    """float32 vector of :data:`SIZE`; equal (up to resampling) for augmented copies."""
    image = Image.fromarray(np.ascontiguousarray(rgb)).convert("L")
    grey = np.asarray(image.reduce(max(1, -(-max(image.size) // ANALYSIS_SIDE))))
    mask = head_mask(grey)
    ys, xs = np.nonzero(mask)
    cy, cx, radius = ys.mean(), xs.mean(), np.sqrt(mask.sum() / np.pi)
    level = grey.astype(np.float32)
    level = ndimage.gaussian_filter(level / (level[mask].mean() + 1e-6), radius / 40)
    r = np.linspace(0.05, 1.0, RINGS)[:, None] * radius
    a = np.linspace(0, 2 * np.pi, ANGLES, endpoint=False)[None, :]
    polar = ndimage.map_coordinates(level, [cy + r * np.sin(a), cx + r * np.cos(a)], order=1)
    spectrum = np.fft.rfft(polar, axis=1)[:, :HARMONICS] / ANGLES
    cross = (spectrum[:-1] * np.conj(spectrum[1:])).real.ravel()
    # Square roots even out the weight of strong low and weak high harmonics.
    parts = [np.sqrt(np.abs(spectrum).ravel()), np.sign(cross) * np.sqrt(np.abs(cross))]
    return np.concatenate(parts).astype(np.float32)


def head_mask(grey: np.ndarray) -> np.ndarray:
    """The head: bright, not border-touching flat fill, the largest such region, holes filled."""
    blurred = np.asarray(
        Image.fromarray(grey).filter(ImageFilter.GaussianBlur(max(1.0, 0.01 * max(grey.shape))))
    )
    mask = blurred > _otsu(blurred) / 2
    level = grey.astype(np.float32)
    mean = ndimage.uniform_filter(level, 5)
    flat = ndimage.uniform_filter(level * level, 5) - mean * mean < _FLAT_STD**2
    regions, _ = ndimage.label(flat)
    border = np.unique(np.r_[regions[0], regions[-1], regions[:, 0], regions[:, -1]])
    fill = np.isin(regions, border[border > 0])
    mask &= ~box_max(fill, 7)
    mask = box_max(box_min(mask, 5), 5)  # drop specks and text
    regions, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.ones_like(mask)
    sizes = ndimage.sum_labels(mask, regions, range(1, count + 1))
    return fill_holes(regions == 1 + int(np.argmax(sizes)))


def _otsu(grey: np.ndarray) -> int:
    """The grey level that best splits the histogram in two (Otsu, 1979)."""
    p = np.bincount(grey.ravel(), minlength=256) / grey.size
    weight, mean = np.cumsum(p), np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean[-1] * weight - mean) ** 2 / (weight * (1 - weight))
    return int(np.nanargmax(between))


def distances(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """len(rows) × len(cols) L2 distances, by one matrix product."""
    sq = (rows * rows).sum(1)[:, None] + (cols * cols).sum(1)[None, :] - 2 * rows @ cols.T
    return np.sqrt(np.maximum(sq, 0))


def pair_distances(sigs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Distances of given (i, j) rows only."""
    if len(pairs) == 0:
        return np.empty(0, dtype=np.float32)
    return np.linalg.norm(sigs[pairs[:, 0]] - sigs[pairs[:, 1]], axis=1)
