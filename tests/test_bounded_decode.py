"""Decoding bounded in bytes, pixels, formats, listing and memory (issue 17, item 4).

A file over the byte limit is quarantined from the listing's size, or from a read that stops one
byte past the limit when it grew since; listing stops one file past ``max_images``; formats
outside the supported four are not parsed; PIL's process-wide pixel limit is left alone; and
many large 16-bit TIFFs decode in the threads the memory budget holds, under that budget.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from braintl.data.decode import (
    ALLOWED_FORMATS,
    NOT_AN_IMAGE,
    TOO_LARGE,
    DecodeLimits,
    Quarantine,
    decode,
)
from braintl.data.listing import _walk, list_images
from braintl.data.manifest import OK, scan
from braintl.errors import UserError
from braintl.limits import GB, decode_workers
from braintl.storage import resolve

REPO = Path(__file__).resolve().parents[1]


def _png(seed: int = 0, size: int = 64) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _folder(root: Path, per_label: int) -> Path:
    for label in ("yes", "no"):
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            (root / label / f"{i:03}.png").write_bytes(_png(seed=i + 100 * (label == "yes")))
    return root


def test_pils_pixel_limit_is_not_changed_process_wide():
    """Importing every braintl module that decodes leaves PIL's bomb check at its default."""
    code = (
        "from PIL import Image; default = Image.MAX_IMAGE_PIXELS; "
        "import braintl.data.prepare, braintl.commands.data; "
        "from braintl.data.decode import decode, DecodeLimits; "
        "decode(open(__import__('sys').argv[1], 'rb').read(), DecodeLimits()); "
        "assert default and Image.MAX_IMAGE_PIXELS == default, Image.MAX_IMAGE_PIXELS"
    )
    png = REPO / "docs" / "report.png"
    subprocess.run([sys.executable, "-c", code, str(png)], check=True, cwd=REPO)
    with pytest.raises(UserError, match="over PIL's decompression-bomb limit"):
        DecodeLimits(max_pixels=Image.MAX_IMAGE_PIXELS + 1)


@pytest.mark.parametrize("fmt", ["GIF", "TGA", "PCX", "ICO"])
def test_formats_outside_the_supported_four_are_not_parsed(fmt):
    image = Image.open(io.BytesIO(_png()))
    buf = io.BytesIO()
    image.save(buf, fmt)
    assert decode(_png()).format in ALLOWED_FORMATS  # the same pixels as PNG decode
    with pytest.raises(Quarantine) as info:
        decode(buf.getvalue())
    assert info.value.reason == NOT_AN_IMAGE
    assert "JPEG, PNG, BMP, TIFF" in info.value.detail


def test_a_file_over_the_byte_limit_is_quarantined(tmp_path):
    root = _folder(tmp_path / "data", 3)
    big = root / "yes" / "big.png"
    big.write_bytes(_png(seed=7, size=200))  # about 40 kB; the others about 4 kB
    limits = DecodeLimits(max_bytes=20_000)
    with pytest.raises(Quarantine, match="bytes, over the limit of 20000 bytes") as info:
        decode(big.read_bytes(), limits)
    assert info.value.reason == TOO_LARGE
    listing = list_images(str(root))
    grown = root / "no" / "000.png"  # grows after listing: the read stops at the limit + 1
    grown.write_bytes(grown.read_bytes() + b"\0" * 30_000)
    manifest = scan(listing, limits)
    reasons = {r.relpath: (r.status, r.reason) for r in manifest.records}
    assert reasons.pop("yes/big.png") == ("quarantined", TOO_LARGE)
    assert reasons.pop("no/000.png") == ("quarantined", TOO_LARGE)
    assert set(reasons.values()) == {(OK, "")}
    assert len(resolve(str(grown)).read_bytes(limit=1000)) == 1001


def test_listing_stops_one_past_max_images(tmp_path, s3_bucket):
    import fsspec

    root = _folder(tmp_path / "data", 12)
    assert len(list_images(str(root), max_images=24).images) == 24
    with pytest.raises(UserError, match="more than max_images=23 files"):
        list_images(str(root), max_images=23)
    fs = fsspec.filesystem("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    fs.put(str(root), f"{s3_bucket}/data", recursive=True)
    for url in (str(root), f"{s3_bucket}/data"):
        assert len(_walk(resolve(url).join("yes"), 5)) == 5
        assert len(_walk(resolve(url).join("yes"))) == 12
    with pytest.raises(UserError, match="more than max_images=5 files"):
        list_images(f"{s3_bucket}/data", max_images=5)


def test_decode_threads_follow_the_memory_budget():
    peak = DecodeLimits().peak_bytes()
    assert decode_workers(peak, 100.0, 8) == 8
    assert decode_workers(peak, 2.5 * peak / GB, 8) == 2
    assert decode_workers(peak, 0.001, 8) == 1  # one file over the budget still decodes, alone


@pytest.mark.slow
def test_many_large_sixteen_bit_tiffs_decode_under_the_budget(tmp_path):
    """Six 16 MP 16-bit TIFFs (32 MB of pixels each, 50 kB on disk) under a budget that holds
    two decodes at the limits' worst case: the scan's peak RSS stays under the budget.
    benchmarks/bench_decode_memory.py does the same at 64 MP."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_decode_memory import measure, write_tiffs

    pixels = write_tiffs(tmp_path, 6, side=4000)
    limits = {"max_pixels": pixels, "max_bytes": 1_000_000}
    budget_gb = 2.5 * DecodeLimits(**limits).peak_bytes() / GB
    result = measure(tmp_path, budget_gb, limits)
    assert result["workers"] == 2 and result["decoded"] == 6
    assert result["peak_rss"] - result["rss_before"] < budget_gb * GB
