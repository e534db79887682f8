"""Hostile and broken input: every file ends usable, quarantined with a reason, or skipped with a
reason, and every folder either scans or fails with one clear error; never a crash or a hang.

Decoding of single bad files (truncated JPEG, broken PNG CRC, zero bytes, text named .jpg, a
PNG bomb, 16-bit grey, CMYK JPEG, one EXIF rotation) is in test_decode.py; here are the rest and
the same files met by listing, scanning and preparing a whole folder.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from artifacts import artifacts_dir
from PIL import Image

from braintl.data.decode import CORRUPT, TOO_LARGE, TOO_SMALL, UNREADABLE, Quarantine, decode
from braintl.data.listing import list_images
from braintl.data.manifest import OK, QUARANTINED, scan
from braintl.data.prepare import DataConfig, prepare
from braintl.errors import UserError


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _scan(size: int = 64, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    return Image.fromarray(arr, "L")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png16_rgb(values: np.ndarray) -> bytes:
    """A 48-bit PNG (16 bits per RGB channel), which PIL cannot write itself."""
    h, w, _ = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims ``width`` × ``height``."""
    data = bytearray(_encode(_scan().convert("RGB"), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(_encode(_scan().convert("RGB"), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [_jpeg_declaring(60_000, 60_000), _bmp_declaring(100_000, 100_000)],
    ids=["jpeg", "bmp"],
)
def test_bombs_in_other_formats_refused_from_the_header(data):
    """A 3.6-gigapixel JPEG or a 10-gigapixel BMP would take 10-30 GB to decode."""
    with pytest.raises(Quarantine) as info:
        decode(data)
    assert info.value.reason == TOO_LARGE and "pixels, over the limit" in info.value.detail


def test_sixteen_bit_rgb_and_cmyk_tiff():
    values = np.zeros((40, 40, 3), dtype=np.uint16)
    values[..., 0] = 65535
    values[20:, ..., 2] = 257 * 100
    rgb = decode(_png16_rgb(values)).rgb
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[30, 0].tolist() == [255, 0, 100]
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red in ink
    assert decode(_encode(cmyk, "TIFF")).rgb[0, 0].tolist() == [255, 0, 0]


# Where a white marker painted at the top-left of the stored pixels ends up once EXIF
# orientation 1..8 is applied (the EXIF/TIFF definitions of the eight orientations).
ORIENTATIONS = {
    1: ("wide", "top-left"),
    2: ("wide", "top-right"),
    3: ("wide", "bottom-right"),
    4: ("wide", "bottom-left"),
    5: ("tall", "top-left"),
    6: ("tall", "top-right"),
    7: ("tall", "bottom-right"),
    8: ("tall", "bottom-left"),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_every_exif_orientation_turns_upright(orientation):
    image = Image.new("RGB", (80, 40), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 12, 12))
    exif = Image.Exif()
    exif[0x0112] = orientation
    rgb = decode(_encode(image, "JPEG", exif=exif.tobytes(), quality=95)).rgb
    shape, corner = ORIENTATIONS[orientation]
    assert rgb.shape[:2] == ((40, 80) if shape == "wide" else (80, 40))
    h, w = rgb.shape[:2]
    y = slice(0, 8) if corner.startswith("top") else slice(h - 8, h)
    x = slice(0, 8) if corner.endswith("left") else slice(w - 8, w)
    assert rgb[y, x].mean() > 200


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_nonsense_exif_orientation_is_ignored(value):
    exif = Image.Exif()
    exif[0x0112] = value
    rgb = decode(_encode(_scan(48).convert("RGB"), "JPEG", exif=exif.tobytes())).rgb
    assert rgb.shape == (48, 48, 3)


def _hostile_folder(root: Path, phantom_dir: Path, outside: Path) -> dict[str, str]:
    """Phantoms plus hostile files; returns relpath → the status or reason each must end with."""
    shutil.copytree(phantom_dir, root)
    good = _encode(_scan(), "PNG")
    expected = {}
    named = {
        "yes/scan with  spaces .png": good,
        "yes/skän 脑部 🧠.png": _encode(_scan(seed=1), "PNG"),
        "yes/nfd-Åsa.png".replace("Å", "A\u030a"): _encode(_scan(seed=2), "PNG"),
        "no/..dots...png": _encode(_scan(seed=3), "PNG"),
        "no/..png": _encode(_scan(seed=4), "PNG"),
        "no/-rf --help.jpg": _encode(_scan(seed=5).convert("RGB"), "JPEG"),
        "no/new\nline.png": _encode(_scan(seed=6), "PNG"),
    }
    for rel, data in named.items():
        (root / rel).write_bytes(data)
        expected[rel] = OK
    bad = {
        "yes/bomb.jpg": (_jpeg_declaring(60_000, 60_000), TOO_LARGE),
        "yes/bomb.bmp": (_bmp_declaring(100_000, 100_000), TOO_LARGE),
        "no/sub/deeper/tiny.png": (_encode(_scan(8), "PNG"), TOO_SMALL),
        "no/cut.jpg": (_jpeg_declaring(64, 64)[:300], CORRUPT),
    }
    for rel, (data, reason) in bad.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        expected[rel] = reason
    outside.mkdir()
    (outside / "private.png").write_bytes(_encode(_scan(seed=9), "PNG"))
    (root / "yes" / "to-outside").symlink_to(outside)  # a linked folder
    (root / "yes" / "private.png").symlink_to(outside / "private.png")  # a linked file
    (root / "no" / "loop").symlink_to(root / "no")  # a cycle
    (root / "maybe").symlink_to(outside)  # a linked label folder
    (root / "notes.txt").write_text("not in a label folder")
    for rel in ("yes/to-outside", "yes/private.png", "no/loop", "maybe"):
        expected[rel] = "symbolic link, not followed"
    expected["notes.txt"] = "not inside a label folder"
    return expected


def test_hostile_folder_scans_and_prepares(tmp_path, phantom_dir):
    expected = _hostile_folder(tmp_path / "data", phantom_dir, tmp_path / "outside")
    manifest = scan(list_images(str(tmp_path / "data")))
    ended = {
        r.relpath: (r.reason if r.status == QUARANTINED else r.status) for r in manifest.records
    }
    ended |= {rel: why for rel, why in manifest.skipped}
    assert {rel: ended[rel][: len(want)] for rel, want in expected.items()} == expected
    assert not any("private" in rel and status == OK for rel, status in ended.items())
    details = {r.relpath: r.detail for r in manifest.records if r.status == QUARANTINED}
    assert all(details.values())
    prepared = prepare(
        str(tmp_path / "data"),
        str(tmp_path / "out"),
        DataConfig(preprocess={"image_size": 32}, augment={"enabled": False}, folds=2),
    )
    assert prepared.meta["originals"] == 48 + 7
    assert "yes/skän 脑部 🧠.png" in prepared.meta["files"]


def test_only_linked_label_folders_is_a_clear_error(tmp_path, phantom_dir):
    root = tmp_path / "data"
    root.mkdir()
    (root / "yes").symlink_to(phantom_dir / "yes")
    (root / "no").symlink_to(phantom_dir / "no")
    with pytest.raises(UserError, match="no label folders.*Linked folders are not followed: "):
        list_images(str(root))


def test_unexpected_label_folder_named_in_the_error(tmp_path, phantom_dir):
    root = tmp_path / "data"
    shutil.copytree(phantom_dir, root)
    (root / "Yes (old) ").mkdir()
    with pytest.raises(UserError, match=r"folder\(s\) 'Yes \(old\) ' not in the label map"):
        list_images(str(root))


def test_file_gone_between_listing_and_reading(tmp_path, phantom_dir):
    root = tmp_path / "data"
    shutil.copytree(phantom_dir, root)
    listing = list_images(str(root))
    gone = listing.images[0]
    (root / gone.relpath).unlink()
    (root / listing.images[1].relpath).unlink()
    (root / listing.images[1].relpath).mkdir()  # replaced by a folder
    records = {r.relpath: r for r in scan(listing).records}
    for ref in listing.images[:2]:
        assert records[ref.relpath].reason == UNREADABLE
        assert "gone or not a file" in records[ref.relpath].detail


def test_object_keys_that_name_other_objects_are_skipped(s3_bucket, phantom_dir):
    """S3 keys may hold '..', '.' and '//'; read as paths they would reach other objects."""
    import boto3

    bucket = s3_bucket.removeprefix("s3://")
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for path in sorted(phantom_dir.rglob("*.png")):
        key = f"data/{path.relative_to(phantom_dir)}"
        client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    for marker in ("data/", "data/yes/", "data/no/sub/"):  # empty folder objects: not files
        client.put_object(Bucket=bucket, Key=marker, Body=b"")
    secret = _encode(_scan(seed=42), "PNG")
    client.put_object(Bucket=bucket, Key="private/secret.png", Body=secret)
    hostile = [
        "data/yes/../../private/secret.png",
        "data/no/../yes/relabelled.png",
        "data/yes/./dot.png",
        "data/no//double.png",
        "data//top.png",
        "data/./no/dot.png",
        "data/../up.png",
    ]
    for key in hostile:
        client.put_object(Bucket=bucket, Key=key, Body=secret)
    listing = list_images(f"{s3_bucket}/data")
    assert len(listing.images) == 48
    skipped = dict(listing.skipped)
    # Below a label folder the whole key is named; at the top, the component that would move.
    below = [k.removeprefix("data/") for k in hostile[:4]]
    assert sorted(skipped) == sorted([*below, "", ".", ".."])
    assert all("'..' path component" in why for why in skipped.values())
    manifest = scan(listing)
    assert len(manifest.usable()) == 48


@pytest.mark.slow
def test_ten_thousand_tiny_files(tmp_path, phantom_dir):
    """10 000 files: 48 phantoms and 9 952 tiny images (8×8 px, quarantined). The scan's time
    is reported in the manifest and saved under test-artifacts/ (no timing assert)."""
    root = tmp_path / "data"
    shutil.copytree(phantom_dir, root)
    tiny = _encode(_scan(8), "PNG")
    start = time.perf_counter()
    for i in range(10_000 - 48):
        folder = root / ("yes", "no")[i % 2] / f"batch{i // 1000}"
        folder.mkdir(exist_ok=True)
        (folder / f"t{i:05d}.png").write_bytes(tiny)
    written = time.perf_counter() - start
    start = time.perf_counter()
    listing = list_images(str(root))
    listed = time.perf_counter() - start
    manifest = scan(listing)
    summary = manifest.summary()
    assert summary["files"] == 10_000 and len(manifest.usable()) == 48
    assert {q["reason"] for q in summary["quarantined"]} == {TOO_SMALL}
    figures = {
        "files": 10_000,
        "write_seconds": round(written, 2),
        "list_seconds": round(listed, 2),
        "scan_seconds": summary["seconds"],
        "files_per_second": round(10_000 / summary["seconds"]),
        "cpus": os.cpu_count(),
    }
    (artifacts_dir() / "scan_10k_tiny_files.json").write_text(json.dumps(figures, indent=2))
    print(f"\n10 000 files: {figures}")
