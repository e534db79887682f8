"""Decode one image file completely, or say precisely why it cannot be used.

Every file is decoded to the last pixel (a header that opens is not enough: truncated
JPEGs open fine), checked against size limits before any pixel is allocated, turned
upright by its EXIF orientation and converted to 8-bit RGB by fixed rules, so the same
file always yields the same pixels. Only the formats listed in :data:`ALLOWED_FORMATS` are
parsed: every other PIL plugin is attack surface a scan never needs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from braintl.errors import UserError

# The formats listing accepts by extension (listing.IMAGE_EXTENSIONS), as PIL names them.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF")
MB = 1024**2
# Peak bytes per declared pixel while one image is decoded, converted and hashed: its PIL
# buffer (2 B for 16-bit grey), the array copy, the RGB result (3 B) and the hashes' grey
# copies. Measured 9.7-10.5 B/px on 64 MP 16-bit TIFFs (benchmarks/decode_memory.json).
PEAK_BYTES_PER_PIXEL = 12
EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt"
TOO_SMALL = "too_small"
TOO_LARGE = "decompression_bomb"
UNREADABLE = "unreadable"
REASONS = (EMPTY, NOT_AN_IMAGE, CORRUPT, TOO_SMALL, TOO_LARGE, UNREADABLE)


class Quarantine(Exception):
    """An unusable file: ``reason`` is one of :data:`REASONS`, ``detail`` says more."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodeLimits:
    """Per-call limits. PIL's own ``MAX_IMAGE_PIXELS`` is process-wide and left at its
    default as a backstop, so ``max_pixels`` may not exceed it."""

    min_side: int = 32
    max_pixels: int = 64_000_000  # about 8000 × 8000; any scan is far below
    max_bytes: int = 256 * MB  # a 64 MP 16-bit TIFF uncompressed is 128 MB; real scans < 1 MB

    def __post_init__(self):
        if self.min_side < 1 or self.max_pixels < self.min_side**2:
            raise UserError(
                f"bad decode limits min_side={self.min_side}, max_pixels={self.max_pixels}: "
                "min_side must be >= 1 and max_pixels >= min_side²"
            )
        pil = Image.MAX_IMAGE_PIXELS
        if pil is not None and self.max_pixels > pil:
            raise UserError(
                f"max_pixels={self.max_pixels} is over PIL's decompression-bomb limit of {pil} "
                "pixels; use a smaller max_pixels (downsample larger scans first)"
            )
        if self.max_bytes < 1:
            raise UserError(f"max_bytes={self.max_bytes}: use a positive number of bytes")

    def peak_bytes(self) -> int:
        """Memory one decode may need at most: the file's bytes and its largest image."""
        return self.max_bytes + self.max_pixels * PEAK_BYTES_PER_PIXEL


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
    if len(data) > limits.max_bytes:
        raise Quarantine(TOO_LARGE, too_many_bytes(len(data), limits))
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        formats = ", ".join(ALLOWED_FORMATS)
        raise Quarantine(NOT_AN_IMAGE, f"not one of the supported formats ({formats})") from None
    except Image.DecompressionBombError as exc:  # over twice PIL's own limit: caught by PIL
        detail = f"declares too many pixels, over the limit of {limits.max_pixels} (PIL: {exc})"
        raise Quarantine(TOO_LARGE, detail) from None
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


def too_many_bytes(size: int, limits: DecodeLimits) -> str:
    return (
        f"{size} bytes, over the limit of {limits.max_bytes} bytes a file (raise max_bytes if "
        "this is a real scan)"
    )


def _verify(data: bytes) -> None:
    """Run the format's integrity check (PNG CRCs, for one), which ``load`` alone skips."""
    with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
        image.verify()


def to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any colour mode to H×W×3 uint8 by fixed rules.

    Transparency is composited onto black (scan backgrounds are black); 16- and 32-bit
    greyscale is scaled linearly from the type's full range to 0..255 (not stretched per
    image, so brightness keeps its meaning); CMYK and palettes use PIL's conversions.
    Integer greyscale goes through a lookup table or in-place integer arithmetic, never a
    float64 copy (8 B a pixel, 512 MB for 64 MP), keeping decoding inside its memory estimate;
    ``(v + 128) // 257`` equals ``rint(v / 257)`` exactly (257 is odd: no ties). Floats are
    scaled in place in float32.
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _grey_to_rgb(_SIXTEEN_BIT[np.asarray(image, dtype=np.uint16)])
    if mode == "I":
        arr = np.array(image, dtype=np.int32)
        if arr.max(initial=0) > 255:
            np.clip(arr, 0, 65535, out=arr)
            arr += 128
            arr //= 257
        return _grey_to_rgb(np.clip(arr, 0, 255, out=arr).astype(np.uint8))
    if mode == "F":
        arr = np.array(image, dtype=np.float32)
        if arr.max(initial=0.0) <= 1.0:
            arr *= 255.0
        np.clip(arr, 0, 255, out=arr)
        return _grey_to_rgb(np.rint(arr, out=arr).astype(np.uint8))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode == "P":
        image = image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


_SIXTEEN_BIT = ((np.arange(65536, dtype=np.uint32) + 128) // 257).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.stack([grey, grey, grey], axis=-1))
