"""Listing, validation, duplicates and fingerprints: on the real MRI set, synthetic files and S3."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from braintl.data.listing import list_images
from braintl.data.manifest import LABEL_CONFLICT, OK, QUARANTINED, scan
from braintl.errors import UserError


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def real_manifest(real_data):
    return scan(list_images(str(real_data)))


@pytest.mark.real_data
def test_every_real_file_loads(real_manifest, real_data):
    files = sorted(p for p in real_data.rglob("*") if p.is_file())
    assert len(real_manifest.records) == len(files) == 253
    bad = [(r.relpath, r.reason, r.detail) for r in real_manifest.records if r.status != OK]
    assert bad == []
    modes = {r.mode for r in real_manifest.records}
    assert {"RGB", "L", "RGBA", "P"} <= modes
    assert {r.format for r in real_manifest.records} == {"JPEG", "PNG"}


@pytest.mark.real_data
def test_real_duplicates_found(real_manifest):
    recs = real_manifest.records
    summary = real_manifest.summary()
    assert summary["exact_duplicate_pairs"] >= 20
    assert summary["near_duplicate_pairs"] >= 20
    # Known copies: Y255 is Y30 with an annotation arrow; Y112/Y146 the same scan re-encoded.
    group = {r.relpath: r.group for r in recs}
    assert group["yes/Y255.JPG"] == group["yes/Y30.jpg"]
    assert group["yes/Y112.JPG"] == group["yes/Y146.JPG"]
    # Different scans stay apart (a 64-bit hash would join these at 6 bits).
    assert group["yes/Y105.jpg"] != group["yes/Y81.jpg"]
    assert summary["label_conflicts"] == []
    assert summary["groups"] < len(recs)


def test_quarantine_reasons_and_run_goes_on(tmp_path, phantom_dir):
    root = tmp_path / "data"
    shutil.copytree(phantom_dir, root)
    good = (root / "yes").iterdir().__next__().read_bytes()
    (root / "yes" / "empty.png").write_bytes(b"")
    (root / "yes" / "text.jpg").write_text("not an image")
    (root / "no" / "trunc.png").write_bytes(good[: len(good) // 2])
    (root / "no" / "tiny.png").write_bytes(_png(np.zeros((20, 20), np.uint8)))
    (root / "no" / "notes.txt").write_text("an annotation file")
    manifest = scan(list_images(str(root)))
    reasons = {r.relpath: r.reason for r in manifest.records if r.status == QUARANTINED}
    assert reasons == {
        "yes/empty.png": "empty",
        "yes/text.jpg": "not_an_image",
        "no/trunc.png": "corrupt",
        "no/tiny.png": "too_small",
    }
    assert manifest.summary()["skipped"] == [
        {"file": "no/notes.txt", "reason": manifest.skipped[0][1]}
    ]
    assert len(manifest.usable()) == 48


def test_label_conflict_kept_out(tmp_path, phantom_dir):
    root = tmp_path / "data"
    shutil.copytree(phantom_dir, root)
    victim = sorted((root / "yes").iterdir())[0]
    shutil.copy(victim, root / "no" / "copy with spaces é.png")
    manifest = scan(list_images(str(root)))
    conflicted = [r.relpath for r in manifest.records if r.status == LABEL_CONFLICT]
    assert sorted(conflicted) == sorted([f"yes/{victim.name}", "no/copy with spaces é.png"])
    assert len(manifest.summary()["label_conflicts"]) == 1
    assert len(manifest.usable()) == 48 - 1


def test_fingerprint_ignores_names_order_location(tmp_path, phantom_dir):
    base = scan(list_images(str(phantom_dir))).fingerprint
    moved = tmp_path / "elsewhere"
    for i, src in enumerate(sorted(phantom_dir.rglob("*.png"), reverse=True)):
        dst = moved / src.parent.name / "nested" / f"renamed_{i:03d}.PNG"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    assert scan(list_images(f"file://{moved}")).fingerprint == base
    # A changed label changes it.
    relabelled = tmp_path / "relabelled"
    shutil.copytree(phantom_dir, relabelled)
    first = sorted((relabelled / "yes").iterdir())[0]
    shutil.move(first, relabelled / "no" / first.name)
    assert scan(list_images(str(relabelled))).fingerprint != base


def test_extensions_case_insensitive_and_recursive(tmp_path):
    rng = np.random.default_rng(0)
    for folder, name in [
        ("yes", "a.JPG"),
        ("yes", "deep/b.Jpeg"),
        ("no", "c.bmp"),
        ("no", "d.TIFF"),
    ]:
        path = tmp_path / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        img.save(
            path,
            {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tiff": "TIFF"}[
                Path(name).suffix.lower()
            ],
        )
    listing = list_images(str(tmp_path))
    assert sorted(r.relpath for r in listing.images) == [
        "no/c.bmp",
        "no/d.TIFF",
        "yes/a.JPG",
        "yes/deep/b.Jpeg",
    ]


def test_symlinks_not_followed(tmp_path, phantom_dir):
    root = tmp_path / "data"
    shutil.copytree(phantom_dir, root)
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png(np.zeros((64, 64), np.uint8)))
    (root / "yes" / "link.png").symlink_to(outside)
    listing = list_images(str(root))
    assert "yes/link.png" not in [r.relpath for r in listing.images]
    assert [s[0] for s in listing.skipped] == ["yes/link.png"]


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "does not exist"),
        ({"yes": 2}, "fewer than two labels"),
        ({"yes": 2, "no": 2, "maybe": 1}, "'maybe' not in the label map"),
        ({"yes": 2, "no": 0}, "fewer than two labels"),
    ],
)
def test_listing_errors(tmp_path, layout, message):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True)
        for i in range(n):
            (root / folder / f"{i}.png").write_bytes(_png(rng.integers(0, 255, (40, 40), np.uint8)))
    with pytest.raises(UserError, match=message):
        list_images(str(root))


def test_custom_label_map(tmp_path, phantom_dir):
    root = tmp_path / "data"
    shutil.copytree(phantom_dir / "yes", root / "tumour")
    shutil.copytree(phantom_dir / "no", root / "healthy")
    listing = list_images(str(root), {"tumour": "tumor", "healthy": "no_tumor"})
    assert {r.label for r in listing.images} == {"tumor", "no_tumor"}


def test_listing_from_real_s3_server(s3_bucket, phantom_dir):
    import fsspec

    fs = fsspec.filesystem("s3", endpoint_url=__import__("os").environ["AWS_ENDPOINT_URL"])
    fs.put(str(phantom_dir), f"{s3_bucket}/data", recursive=True)
    local = scan(list_images(str(phantom_dir)))
    remote = scan(list_images(f"{s3_bucket}/data"))
    assert len(remote.records) == 48
    assert remote.fingerprint == local.fingerprint
