"""Decoding: every colour mode to the same RGB rules, every bad file to its reason."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from braintl.data.decode import (
    CORRUPT,
    EMPTY,
    NOT_AN_IMAGE,
    TOO_LARGE,
    TOO_SMALL,
    DecodeLimits,
    Quarantine,
    decode,
)


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(mode: str = "L", size=(64, 48)) -> Image.Image:
    w, h = size
    arr = (np.arange(w * h).reshape(h, w) % 256).astype(np.uint8)
    return Image.fromarray(arr, "L").convert(mode)


def reason_of(data: bytes, limits: DecodeLimits | None = None) -> str:
    with pytest.raises(Quarantine) as info:
        decode(data, limits)
    return info.value.reason


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGB", "RGBA", "CMYK"])
def test_colour_modes_become_rgb(mode):
    image = gradient(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode(encode(image, fmt))
    assert out.rgb.shape == (48, 64, 3) and out.rgb.dtype == np.uint8
    assert out.mode == mode
    # Deterministic: same bytes, same pixels.
    assert np.array_equal(out.rgb, decode(encode(image, fmt)).rgb)


def test_greyscale_channels_equal_and_alpha_on_black():
    grey = decode(encode(gradient("L"))).rgb
    assert np.array_equal(grey[..., 0], grey[..., 1])
    rgba = Image.new("RGBA", (40, 40), (200, 100, 50, 0))  # fully transparent
    assert decode(encode(rgba)).rgb.max() == 0


def test_sixteen_bit_scaled_from_full_range():
    arr = np.full((40, 40), 65535, dtype=np.uint16)
    arr[:20] = 257 * 100
    image = Image.fromarray(arr)  # mode I;16
    rgb = decode(encode(image)).rgb
    assert rgb[30, 0, 0] == 255 and rgb[0, 0, 0] == 100


def test_exif_orientation_applied():
    image = Image.new("RGB", (80, 40), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 40))  # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    rgb = decode(encode(image, "JPEG", exif=exif.tobytes(), quality=95)).rgb
    assert rgb.shape == (80, 40, 3)  # upright: taller than wide
    assert rgb[:10].mean() > 200  # the strip is now at the top


def test_zero_bytes():
    assert reason_of(b"") == EMPTY


def test_text_named_jpg():
    assert reason_of(b"this is not an image, just text\n" * 10) == NOT_AN_IMAGE


def test_truncated_jpeg():
    data = encode(gradient("RGB", (256, 256)), "JPEG")
    assert reason_of(data[: len(data) // 2]) == CORRUPT


def test_png_with_broken_crc():
    data = bytearray(encode(gradient("RGB")))
    idat = data.index(b"IDAT")
    data[idat + 8] ^= 0xFF  # flip a byte inside the compressed pixel data
    assert reason_of(bytes(data)) == CORRUPT


def test_too_small():
    assert reason_of(encode(gradient("L", (31, 100)))) == TOO_SMALL
    assert decode(encode(gradient("L", (8, 8))), DecodeLimits(min_side=8)).rgb.shape[:2] == (8, 8)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size: what a decompression bomb looks like at the door."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding():
    assert reason_of(_png_header_only(100_000, 100_000)) == TOO_LARGE
    assert (
        reason_of(encode(gradient("L", (200, 200))), DecodeLimits(max_pixels=10_000)) == TOO_LARGE
    )
