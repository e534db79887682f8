"""Synthetic MRI-like phantoms: fast test data and the demo set when no real scans are given.

A phantom is an axial "slice": a dark background, a head whose outline is a wobbly ellipse of
random size, position and rotation, a bright skull ring, a dark CSF gap, textured brain tissue with
ventricles and a smooth bias field. A tumor is a bright irregular blob (sometimes with a dark
oedema halo) inside the brain. Both classes carry small bright dots, so "brightest spot in the
brain" alone does not give the label away: a classifier has to learn blob size and shape.

Every phantom draws its own shape, position and texture, so two phantoms are never perceptual-hash
near duplicates (which the duplicate detector would group, or flag as a label conflict).

A :class:`Scanner` changes what another site's machine would: contrast (a gamma on the grey
levels) and noise. The default is the development set's; an external-validation test draws its
"other source" with another scanner, size and seed.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO

import numpy as np
from PIL import Image
from scipy import ndimage

from braintl.storage import resolve

LABELS = {"yes": True, "no": False}  # label folder -> has a tumor
# What write_phantom_dataset names its files: how a run knows, from its manifest, that its data
# are synthetic, wherever the set was written or copied.
PHANTOM_FILE = re.compile(r"phantom_(yes|no)_\d{4,}\.\w+")


@dataclass(frozen=True)
class Scanner:
    """How a site's scanner renders a phantom: ``gamma`` on the grey levels (above 1 darker
    mid-tones, below 1 brighter) and ``noise`` multiplying the noise's standard deviation."""

    gamma: float = 1.0
    noise: float = 1.0

    def __post_init__(self):
        if self.gamma <= 0 or self.noise < 0:
            raise ValueError(f"{self}: gamma must be > 0 and noise >= 0")


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-sd random field varying over about ``scale`` pixels.

    A coarse random grid upsampled bicubically: as smooth as a wide Gaussian filter at a
    fraction of its cost.
    """
    n = int(np.ceil(size / scale)) + 1
    grid = Image.fromarray(rng.standard_normal((n, n)).astype(np.float32))
    field = np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    return (field - field.mean()) / (field.std() + 1e-12)


def _wobble(rng: np.random.Generator, phi: np.ndarray, amplitude: float) -> np.ndarray:
    """A radius multiplier ``1 + Σ a_k cos(kφ + p_k)``: turns a circle into an irregular outline.

    Floored at 0.25 so a strong wobble dents the outline but never turns it inside out.
    """
    out = np.ones_like(phi)
    for k in range(2, 7):
        out += rng.uniform(0, amplitude) / k * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return np.maximum(out, 0.25)


def make_phantom(
    rng: np.random.Generator, tumor: bool, size: int = 256, scanner: Scanner = Scanner()
) -> np.ndarray:
    """One phantom as an RGB uint8 ``size×size×3`` array (grey, like the real scans)."""
    if size < 32:
        raise ValueError(f"phantom size {size} is too small: use at least 32 px")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    # Head: a rotated, wobbly ellipse.
    cx, cy = size / 2 + rng.uniform(-0.13, 0.13, 2) * size
    a = rng.uniform(0.27, 0.44) * size
    b = a * rng.uniform(0.65, 0.95)
    theta = rng.uniform(0, np.pi)
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
    rn = np.hypot(u, v) / _wobble(rng, np.arctan2(v, u), 0.12)
    skull_width = rng.uniform(0.05, 0.10)
    brain_edge = 1 - skull_width - rng.uniform(0.015, 0.04)
    head, brain = rn <= 1, rn <= brain_edge

    img = rng.uniform(0, 8) + rng.normal(0, 1.5, (size, size))
    img[head & ~brain] = rng.uniform(15, 35)  # CSF gap
    img[(rn > 1 - skull_width) & head] = rng.uniform(165, 225)  # skull

    # Brain tissue: grey matter rim, white matter core, texture at three scales.
    tissue = rng.uniform(85, 115) + rng.uniform(-22, 22) * (rn < brain_edge * rng.uniform(0.6, 0.8))
    tissue = tissue + rng.uniform(15, 28) * _smooth_noise(rng, size, size / rng.uniform(3, 6))
    tissue = tissue + rng.uniform(5, 12) * _smooth_noise(rng, size, size / rng.uniform(15, 30))
    tissue = tissue + rng.uniform(3, 7) * _smooth_noise(rng, size, 1.5)
    # Ventricles: a pair of dark ellipses either side of the head's short axis.
    sep, vlen, vwid = rng.uniform(0.06, 0.14), rng.uniform(0.12, 0.28), rng.uniform(0.04, 0.08)
    for side in (-1, 1):
        vu, vv = u - rng.normal(0, 0.03), v - side * sep
        tissue[(vu / vlen) ** 2 + (vv / vwid) ** 2 <= 1] = rng.uniform(25, 45)
    # Small bright dots in both classes (vessels, calcifications): distractors, not tumors.
    for _ in range(rng.integers(0, 4)):
        r = rng.uniform(0.008, 0.02) * size
        ang, rad = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 0.5)) * brain_edge
        px, py = _inside(cx, cy, a, b, theta, ang, rad)
        tissue[np.hypot(xx - px, yy - py) <= r] += rng.uniform(35, 80)

    # Scanner effects are drawn before the tumor, so one seed gives the same scan with or
    # without a tumor: the pair differs only in the blob (handy for tests and for debugging).
    bias = 1 + rng.uniform(0.1, 0.2) * _smooth_noise(rng, size, size / 3)  # coil bias field
    gain = rng.uniform(0.85, 1.15)
    noise = scanner.noise * rng.normal(0, rng.uniform(1.5, 4), (size, size))

    if tumor:
        # The tumor: an irregular blob, off centre, sometimes with a darker oedema halo.
        radius = rng.uniform(0.06, 0.13) * size
        ang, rad = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 0.45)) * brain_edge
        tx, ty = _inside(cx, cy, a, b, theta, ang, rad)
        tr = np.hypot(xx - tx, yy - ty) / (radius * _wobble(rng, np.arctan2(yy - ty, xx - tx), 0.9))
        if rng.random() < 0.5:
            tissue[(tr > 1) & (tr <= rng.uniform(1.3, 1.7))] -= rng.uniform(15, 30)
        blob = np.clip((1 - tr) / 0.15, 0, 1)  # soft edge
        tissue += blob * (rng.uniform(70, 130) + 8 * _smooth_noise(rng, size, 2.0))

    img[brain] = tissue[brain]
    img = ndimage.gaussian_filter(img * bias * gain, 0.7) + noise
    img = np.clip(img, 0, 255)
    if scanner.gamma != 1.0:
        img = 255 * (img / 255) ** scanner.gamma
    grey = np.rint(img).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _inside(cx, cy, a, b, theta, ang, rad) -> tuple[float, float]:
    """Image coordinates of polar point (``ang``, ``rad``) in the head's normalised frame."""
    pu, pv = rad * np.cos(ang) * a, rad * np.sin(ang) * b
    cos, sin = np.cos(theta), np.sin(theta)
    return cx + pu * cos - pv * sin, cy + pu * sin + pv * cos


def phantom_rng(seed: int, label: str, index: int) -> np.random.Generator:
    """The generator of one phantom: fixed by (seed, label, index), not by the set's size."""
    label_code = int(hashlib.sha256(label.encode()).hexdigest()[:8], 16)
    return np.random.default_rng([seed, label_code, index])


def write_phantom_dataset(
    url_or_path: str | os.PathLike[str],
    n_per_label: dict[str, int] | None = None,
    size: int = 256,
    seed: int = 0,
    fmt: str = "png",
    scanner: Scanner = Scanner(),
) -> str:
    """Write ``<root>/yes/*`` (tumor) and ``<root>/no/*`` phantoms to any storage URL.

    Deterministic: one seed gives the same bytes. Returns the root's URL.
    """
    n_per_label = {"yes": 40, "no": 40} if n_per_label is None else n_per_label
    unknown = sorted(set(n_per_label) - set(LABELS))
    if unknown:
        raise ValueError(f"unknown phantom labels {unknown}: use {sorted(LABELS)}")
    ext = fmt.lower().lstrip(".")
    pil_format = Image.registered_extensions().get(f".{ext}")
    if pil_format is None:
        raise ValueError(f"unknown image format {fmt!r}: use png, jpg, bmp or tiff")
    root = resolve(url_or_path)
    for label, count in n_per_label.items():
        for i in range(count):
            rgb = make_phantom(phantom_rng(seed, label, i), LABELS[label], size, scanner)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format=pil_format)
            root.join(label, f"phantom_{label}_{i:04d}.{ext}").write_bytes(buf.getvalue())
    return root.url


def is_phantom_set(relpaths: Iterable[str]) -> bool:
    """True when every file (relative path) is one :func:`write_phantom_dataset` wrote."""
    names = [path.replace("\\", "/").rsplit("/", 1)[-1] for path in relpaths]
    return bool(names) and all(PHANTOM_FILE.fullmatch(name) for name in names)


def data_or_phantoms(
    data_url: str | None,
    out_url: str,
    log: TextIO,
    before_write: Callable[[], None] | None = None,
) -> str:
    """The data URL given, or else seeded synthetic phantoms written once under ``out_url``:
    the demo every entry point (CLI, flow) falls back to, so all of them share one set.
    ``before_write`` runs before they are written (as in ``prepare``)."""
    if data_url is not None:
        return data_url
    phantoms = resolve(out_url).join("phantoms")
    if not phantoms.is_complete():
        if before_write is not None:
            before_write()
        write_phantom_dataset(phantoms.url, seed=0)
        phantoms.mark_complete({"seed": 0})
    print(f"no data URL given: using synthetic phantoms in {phantoms.url}", file=log)
    return phantoms.url
