"""NIfTI volumes: slices along the chosen axis as radiology shows them, whatever the file's
orientation; the slice rules; a volume as one group that splits keep whole; bad volumes
quarantined. Fixtures: nibabel's own test data and volumes built from phantoms."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
from nibabel.testing import data_path

from braintl.cli import main
from braintl.data.clinical import ClinicalConfig
from braintl.data.decode import DecodeLimits, Quarantine
from braintl.data.formats import decode_file
from braintl.data.phantoms import make_phantom, phantom_rng

LIMITS = DecodeLimits()
IDENTITY = ClinicalConfig(window=(127.5, 255))  # 0..255 maps to itself


def _heads(label: str, n: int, seed: int = 0) -> list[np.ndarray]:
    return [make_phantom(phantom_rng(seed, label, i), label == "yes", 48)[..., 0] for i in range(n)]


def _volume(slices: list[np.ndarray], blank: int = 3, affine=None) -> bytes:
    """An axial stack: ``blank`` black slices, then each image, then ``blank`` black again;
    stored so that the viewer's orientation of slice k is the image itself."""
    black = [np.zeros_like(slices[0])] * blank
    stack = np.stack([np.flipud(s).T for s in black + slices + black], axis=-1)
    image = nibabel.Nifti1Image(stack.astype(np.int16), np.eye(4) if affine is None else affine)
    return gzip.compress(image.to_bytes(), mtime=0)


def _images(data: bytes, config: ClinicalConfig = IDENTITY, name: str = "v.nii.gz"):
    return decode_file(name, data, LIMITS, config)


def test_axial_slices_are_the_images_and_rules_pick_them():
    heads = _heads("yes", 4)
    data = _volume(heads)
    out = _images(data)
    assert [f.suffix for f in out.frames] == [f"#slice={i}" for i in range(10)]
    for k, head in enumerate(heads):
        assert np.array_equal(out.frames[3 + k].decoded.rgb[..., 0], head)
    assert out.frames[0].decoded.rgb.max() == 0
    assert out.identity.group.startswith("volume-") and out.identity.patient == ""
    middle = _images(data, IDENTITY.model_copy(update={"slices": "middle:2"}))
    assert [f.suffix for f in middle.frames] == ["#slice=4", "#slice=5"]
    brain = _images(data, IDENTITY.model_copy(update={"slices": "brain:0.2"}))
    assert [f.suffix for f in brain.frames] == [f"#slice={i}" for i in (3, 4, 5, 6)]
    with pytest.raises(Quarantine, match="no slice has head"):
        _images(data, IDENTITY.model_copy(update={"slices": "brain:0.99"}))
    # 10 slices deep: sagittal and coronal slices are 10 px high, under min_side.
    with pytest.raises(Quarantine, match="sagittal slices of 48×10 px"):
        _images(data, IDENTITY.model_copy(update={"slice_axis": "sagittal"}))


def test_orientation_comes_from_the_affine_and_the_group_from_the_content():
    """The same anatomy stored left-right and front-back flipped, its affine saying so, gives
    the same slices; the group is the bytes' hash, whatever the file's name."""
    heads = _heads("no", 2)
    ras = _volume(heads)
    image = nibabel.Nifti1Image.from_bytes(gzip.decompress(ras))
    lps = nibabel.Nifti1Image(
        np.asarray(image.dataobj)[::-1, ::-1, :], np.diag([-1.0, -1.0, 1.0, 1.0])
    )
    a, b = _images(ras), _images(lps.to_bytes(), name="v.nii")
    assert all(
        np.array_equal(x.decoded.rgb, y.decoded.rgb)
        for x, y in zip(a.frames, b.frames, strict=True)
    )
    assert _images(ras, name="other/name.nii.gz").identity.group == a.identity.group


@pytest.mark.parametrize(
    "name, expected",
    [
        ("anatomical.nii", 25),
        ("example4d.nii.gz", "unsupported"),
        ("functional.nii", "unsupported"),
        ("standard.nii.gz", "too_small"),
    ],
)
def test_nibabel_test_files(name, expected):
    try:
        outcome = len(_images((Path(data_path) / name).read_bytes(), ClinicalConfig(), name).frames)
    except Quarantine as q:
        outcome = q.reason
    assert outcome == expected


def test_broken_volumes_are_quarantined():
    data = _volume(_heads("yes", 1))
    truncated = gzip.compress(gzip.decompress(data)[:-500])
    for broken in (data[: len(data) // 2], truncated, b"not a volume at all" * 30):
        with pytest.raises(Quarantine) as q:
            _images(broken)
        assert q.value.reason == "corrupt"
    bomb = gzip.compress(bytes(4096 * 8 + (1 << 20) + 1))  # more than a tiny limit allows
    with pytest.raises(Quarantine, match="decompresses to over"):
        decode_file("b.nii.gz", bomb, DecodeLimits(min_side=8, max_pixels=1024), IDENTITY)


def test_volumes_are_groups_that_split_keeps_whole(tmp_path, capsys):
    for label in ("yes", "no"):
        for v in range(6):
            path = tmp_path / label / f"vol{v}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_volume(_heads(label, 3, seed=v), blank=0))
    args = ["--slices", "middle:3", "--window", "127.5,255"]
    assert main(["data", "inspect", str(tmp_path), *args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["groups"] == 12 and summary["clinical"]["series"] == 12
    split_args = ["--folds", "2", "--test-fraction", "0.3", "--json"]
    assert main(["data", "split", str(tmp_path), *args, *split_args]) == 0
    split = json.loads(capsys.readouterr().out)
    part_of: dict[str, set[str]] = {}
    for part, files in split["members"].items():
        for f in files:
            part_of.setdefault(f.split("#")[0], set()).add(part)
    assert len(part_of) == 12 and all(len(parts) == 1 for parts in part_of.values())
    assert main(["data", "inspect", str(tmp_path), "--slices", "every:2"]) == 2
    assert "slices" in capsys.readouterr().err
