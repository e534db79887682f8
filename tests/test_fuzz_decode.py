"""Property-based tests: no byte string crashes decoding, no file tree crashes the manifest.

Brief in CI (profile ``braintl-ci``: few examples, a deadline per example, no example
database); ``BRAINTL_FUZZ_PROFILE=braintl-fuzz`` runs thousands of examples for a real hunt.
"""

from __future__ import annotations

import io
import os
from datetime import timedelta

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from braintl.data.decode import REASONS, DecodeLimits, Quarantine, decode
from braintl.data.listing import IGNORED_NAMES, IMAGE_EXTENSIONS, list_images
from braintl.data.manifest import OK, QUARANTINED, scan
from braintl.errors import UserError

settings.register_profile(
    "braintl-ci",
    max_examples=40,
    deadline=timedelta(seconds=5),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "braintl-fuzz",
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILE = settings.get_profile(os.environ.get("BRAINTL_FUZZ_PROFILE", "braintl-ci"))
LIMITS = DecodeLimits(min_side=8, max_pixels=4_000_000)


def _encode(fmt: str, mode: str, size: int) -> bytes:
    rng = np.random.default_rng(size)
    arr = rng.integers(0, 255, (size, size + 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "L").convert(mode).save(buf, fmt)
    return buf.getvalue()


VALID = [
    _encode("JPEG", "RGB", 40),
    _encode("JPEG", "L", 33),
    _encode("JPEG", "CMYK", 36),
    _encode("PNG", "RGBA", 40),
    _encode("PNG", "P", 34),
    _encode("PNG", "I;16", 32),
    _encode("BMP", "RGB", 35),
    _encode("TIFF", "RGB", 38),
]


def _check(data: bytes) -> None:
    """Either 8-bit RGB pixels of an allowed size, or a quarantine with a known reason."""
    try:
        out = decode(data, LIMITS)
    except Quarantine as q:
        assert q.reason in REASONS and q.detail
        return
    h, w, c = out.rgb.shape
    assert c == 3 and out.rgb.dtype == np.uint8
    assert min(h, w) >= LIMITS.min_side and h * w <= LIMITS.max_pixels


@PROFILE
@given(st.binary(max_size=4096))
def test_random_bytes_decode_or_quarantine(data):
    _check(data)


@st.composite
def mutated(draw):
    """A valid file with a few bytes flipped, a slice cut out or its tail dropped."""
    data = bytearray(draw(st.sampled_from(VALID)))
    how = draw(st.sampled_from(["flip", "cut", "truncate"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    elif how == "cut":
        i = draw(st.integers(0, len(data) - 1))
        del data[i : i + draw(st.integers(1, 64))]
    else:
        del data[draw(st.integers(0, len(data) - 1)) :]
    return bytes(data)


@PROFILE
@given(mutated())
def test_mutated_images_decode_or_quarantine(data):
    _check(data)


NAMES = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\x00", max_codepoint=0x2FFF
    ),
    min_size=1,
    max_size=12,
).filter(lambda n: n not in (".", "..") and len(n.encode()) < 200)
FILES = st.tuples(
    st.sampled_from(["yes", "no"]),
    st.lists(NAMES, min_size=0, max_size=2),  # sub-folders
    NAMES,
    st.sampled_from([*IMAGE_EXTENSIONS, ".JPG", ".txt", ""]),
    st.one_of(st.sampled_from(VALID), mutated(), st.binary(max_size=64)),
)


@PROFILE
@given(st.lists(FILES, min_size=1, max_size=12))
def test_any_tree_lists_and_scans(tmp_path_factory, files):
    """Every file is listed as an image or skipped with a reason; every image gets a record."""
    root = tmp_path_factory.mktemp("tree")
    written = {}
    for folder, subdirs, stem, ext, data in files:
        rel = "/".join([folder, *subdirs, stem + ext])
        path = root / rel
        if any(p.is_file() for p in path.parents) or path.is_dir():
            continue  # a name already taken by a file or folder of the other kind
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written[rel] = data
    assume(written)
    try:
        listing = list_images(str(root))
    except UserError as exc:
        assert "fewer than two labels" in str(exc)
        return
    listed = {ref.relpath for ref in listing.images} | {rel for rel, _ in listing.skipped}
    assert listed == {rel for rel in written if not _ignored(rel.rsplit("/", 1)[-1])}
    manifest = scan(listing, LIMITS)
    assert [r.relpath for r in manifest.records] == [ref.relpath for ref in listing.images]
    for record in manifest.records:
        assert record.status in (OK, QUARANTINED, "label_conflict")
        if record.status == QUARANTINED:
            assert record.reason in REASONS and record.detail
    usable = [manifest.records[i] for i in manifest.usable()]
    assert all(r.pixel_hash and r.width >= LIMITS.min_side for r in usable)
    assert len(manifest.fingerprint) == 16


def _ignored(name: str) -> bool:
    """Names listing passes over in silence (macOS and Windows folder litter)."""
    return name.lower() in IGNORED_NAMES or name.startswith("._")
