"""Decode one image file completely, or say precisely why it cannot be used.

Every file is decoded to the last pixel (a header that opens is not enough: truncated
JPEGs open fine), checked against size limits before any pixel is allocated, turned
upright by its EXIF orientation and converted to 8-bit RGB by fixed rules, so the same
file always yields the same pixels.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from braintl.errors import UserError

# PIL's own bomb check is process-global; ours is per call, so lift PIL's and check ourselves.
Image.MAX_IMAGE_PIXELS = None

EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt"
TOO_SMALL = "too_small"
TOO_LARGE = "decompression_bomb"
UNREADABLE = "unreadable"
UNSUPPORTED = "unsupported"  # a DICOM transfer syntax or NIfTI layout braintl cannot decode
REASONS = (EMPTY, NOT_AN_IMAGE, CORRUPT, TOO_SMALL, TOO_LARGE, UNREADABLE, UNSUPPORTED)


class Quarantine(Exception):
    """An unusable file: ``reason`` is one of :data:`REASONS`, ``detail`` says more."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodeLimits:
    min_side: int = 32
    max_pixels: int = 64_000_000  # about 8000 × 8000; any scan is far below

    def __post_init__(self):
        if self.min_side < 1 or self.max_pixels < self.min_side**2:
            raise UserError(
                f"bad decode limits min_side={self.min_side}, max_pixels={self.max_pixels}: "
                "min_side must be >= 1 and max_pixels >= min_side²"
            )


@dataclass(frozen=True)
class Decoded:
    rgb: np.ndarray  # H×W×3 uint8, upright
    format: str
    mode: str  # the file's own colour mode, before conversion


def decode(data: bytes, limits: DecodeLimits | None = None) -> Decoded:
    """Decode ``data`` fully to upright 8-bit RGB or raise :class:`Quarantine`."""
    limits = limits or DecodeLimits()
    if not data:
        raise Quarantine(EMPTY, "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise Quarantine(NOT_AN_IMAGE, "no known image format in the file") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on hostile headers
        raise Quarantine(CORRUPT, f"unreadable header ({type(exc).__name__}: {exc})") from None
    with image:
        width, height = image.size
        if width * height > limits.max_pixels:
            raise Quarantine(
                TOO_LARGE,
                f"declares {width}×{height} = {width * height} pixels, over the limit of "
                f"{limits.max_pixels} (raise max_pixels if this is a real scan)",
            )
        fmt, mode = image.format or "unknown", image.mode
        try:
            _verify(data)
            image.load()
            image = ImageOps.exif_transpose(image)
        except Exception as exc:  # noqa: BLE001
            detail = f"truncated or corrupt ({type(exc).__name__}: {exc})"
            raise Quarantine(CORRUPT, detail) from None
        if min(image.size) < limits.min_side:
            raise Quarantine(
                TOO_SMALL,
                f"{image.size[0]}×{image.size[1]} px, under the minimum of {limits.min_side} px "
                "a side",
            )
        return Decoded(to_rgb(image), fmt, mode)


def _verify(data: bytes) -> None:
    """Run the format's integrity check (PNG CRCs, for one), which ``load`` alone skips."""
    with Image.open(io.BytesIO(data)) as image:
        image.verify()


def to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any colour mode to H×W×3 uint8 by fixed rules.

    Transparency is composited onto black (scan backgrounds are black); 16- and 32-bit
    greyscale is scaled linearly from the type's full range to 0..255 (not stretched per
    image, so brightness keeps its meaning); CMYK and palettes use PIL's conversions.
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        grey = np.asarray(image, dtype=np.uint16).astype(np.float64) / 257.0
        return _grey_to_rgb(grey)
    if mode == "I":
        arr = np.asarray(image, dtype=np.int64)
        scale = 257.0 if arr.max(initial=0) > 255 else 1.0
        return _grey_to_rgb(np.clip(arr / scale, 0, 255))
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        return _grey_to_rgb(np.clip(arr * scale, 0, 255))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode == "P":
        image = image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    g = np.rint(grey).astype(np.uint8)
    return np.ascontiguousarray(np.stack([g, g, g], axis=-1))
