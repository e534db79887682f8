"""NIfTI volumes (``.nii``, ``.nii.gz``, with nibabel) as slices: each slice one image, the
volume one group.

The volume is turned to RAS+ orientation first, so ``slice_axis`` means the same anatomical
plane whatever the scanner wrote (axial: along superior, the default; coronal; sagittal), and
each slice is shown as radiology viewers show it (anterior or superior up). All slices share the
volume's window (``clinical``). ``slices`` keeps all of them, the middle K, or those where the
head (windowed grey level above the crop threshold, 45) covers at least a fraction F of the
slice. A gzip is decompressed only up to what the size limit allows, so a small bomb stays small.
The volume's group is a hash of its bytes: named after its content, not its file name.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib

import nibabel
import numpy as np

from braintl.data.clinical import (
    AXES,
    VOLUME_FACTOR,
    ClinicalConfig,
    FileImages,
    Frame,
    Identity,
    to_uint8,
    window_bounds,
)
from braintl.data.decode import (
    CORRUPT,
    NOT_AN_IMAGE,
    TOO_LARGE,
    TOO_SMALL,
    UNSUPPORTED,
    Decoded,
    DecodeLimits,
    Quarantine,
)

HEAD_THRESHOLD = 45  # grey level counted as head, as the brain crop counts it


def decode_volume(data: bytes, limits: DecodeLimits, config: ClinicalConfig) -> FileImages:
    """The selected slices of a NIfTI volume as 8-bit RGB, or :class:`Quarantine`."""
    volume = _load(_inflate(data, limits), limits)
    slices = np.moveaxis(volume, AXES[config.slice_axis], 0)
    height, width = slices.shape[2], slices.shape[1]
    if height * width > limits.max_pixels:
        raise Quarantine(TOO_LARGE, f"{width}×{height} px slices, over max_pixels")
    if min(height, width) < limits.min_side:
        raise Quarantine(
            TOO_SMALL,
            f"{config.slice_axis} slices of {width}×{height} px, under the minimum of "
            f"{limits.min_side} px a side (another slice_axis may fit)",
        )
    bounds = window_bounds(config, None, slices)
    images = [to_uint8(np.flipud(s.T), bounds) for s in slices]
    keep = _select(images, config.slices)
    group = "volume-" + hashlib.sha256(data).hexdigest()[:16]
    frames = tuple(Frame(f"#slice={i}", Decoded(images[i], "NIfTI", "volume")) for i in keep)
    return FileImages(frames, Identity(series=group, group=group))


def _inflate(data: bytes, limits: DecodeLimits) -> bytes:
    """Uncompressed bytes; a gzip is read no further than the largest volume allowed."""
    if data[:2] != b"\x1f\x8b":
        return data
    cap = VOLUME_FACTOR * limits.max_pixels * 8 + (1 << 20)  # float64 voxels and a header
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            raw = stream.read(cap + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise Quarantine(CORRUPT, f"gzip truncated or corrupt ({type(exc).__name__})") from None
    if len(raw) > cap:
        raise Quarantine(TOO_LARGE, f"decompresses to over {cap} bytes")
    return raw


def _load(raw: bytes, limits: DecodeLimits) -> np.ndarray:
    """The voxels (3-D) in RAS+ orientation; shape and size checked from the header first."""
    kind = nibabel.Nifti2Image if raw[:4] == (540).to_bytes(4, "little") else nibabel.Nifti1Image
    try:
        image = kind.from_bytes(raw)
        shape = image.shape
        if any(d > 1 for d in shape[3:]):
            detail = f"{len(shape)}-D volume {shape}: only 2-D and 3-D volumes are read"
            raise Quarantine(UNSUPPORTED, detail)
        if np.prod(shape, dtype=np.int64) > VOLUME_FACTOR * limits.max_pixels:
            detail = f"{shape} voxels, over {VOLUME_FACTOR}× max_pixels ({limits.max_pixels})"
            raise Quarantine(TOO_LARGE, detail)
        image = kind(np.asanyarray(image.dataobj).reshape((shape + (1, 1))[:3]), image.affine)
        return np.asanyarray(nibabel.as_closest_canonical(image).dataobj)
    except Quarantine:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types on broken files
        detail = f"not a readable NIfTI volume, truncated or corrupt ({type(exc).__name__}: {exc})"
        raise Quarantine(CORRUPT, detail) from None


def _select(images: list[np.ndarray], rule: str) -> list[int]:
    """Indices of the slices ``rule`` keeps (see the module docstring)."""
    n = len(images)
    if rule == "all":
        return list(range(n))
    kind, value = rule.split(":")
    if kind == "middle":
        k = min(int(value), n)
        start = (n - k) // 2
        return list(range(start, start + k))
    areas = [float((image[..., 0] > HEAD_THRESHOLD).mean()) for image in images]
    keep = [i for i, area in enumerate(areas) if area >= float(value)]
    if not keep:
        raise Quarantine(
            NOT_AN_IMAGE,
            f"no slice has head over {float(value):.0%} of its area (largest: {max(areas):.0%}); "
            "lower the brain:F slice rule",
        )
    return keep
