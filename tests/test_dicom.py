"""DICOM files: pydicom's own test files loaded or quarantined as they should be, windowing,
rescale and MONOCHROME1, every transfer syntax giving the same pixels, frames as images, files
found without an extension, and patients as groups that splits keep whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dicom_files import write_dicom
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from braintl.cli import main
from braintl.data.clinical import ClinicalConfig
from braintl.data.decode import DecodeLimits, Quarantine
from braintl.data.formats import decode_file
from braintl.data.listing import list_images
from braintl.data.manifest import scan
from braintl.data.phantoms import make_phantom, phantom_rng
from braintl.data.pseudonyms import SALT_ENV
from braintl.errors import UserError

# Every DICOM file pydicom ships (3.0), with what braintl makes of it under the default limits:
# the number of images, or the quarantine reason.
PYDICOM_FILES = {
    "693_J2KI.dcm": 1,
    "CT_small.dcm": 1,
    "ExplVR_BigEnd.dcm": 1,
    "ExplVR_BigEndNoMeta.dcm": "not_an_image",  # an RT Ion Plan
    "ExplVR_LitEndNoMeta.dcm": "not_an_image",
    "GDCMJ2K_TextGBR.dcm": 1,
    "J2K_pixelrep_mismatch.dcm": 1,
    "JPEG-lossy.dcm": "corrupt",  # pydicom's example of a stream only GDCM decodes
    "JPEG2000-embedded-sequence-delimiter.dcm": "corrupt",
    "JPEG2000.dcm": 1,
    "JPEGLSNearLossless_08.dcm": "too_small",  # 10 px wide
    "JPEGLSNearLossless_16.dcm": "too_small",
    "JPGExtended.dcm": 1,
    "MR_small.dcm": 1,
    "MR_small_RLE.dcm": 1,
    "MR_small_bigendian.dcm": 1,
    "MR_small_expb.dcm": 1,
    "MR_small_implicit.dcm": 1,
    "MR_small_jp2klossless.dcm": 1,
    "MR_small_jpeg_ls_lossless.dcm": 1,
    "MR_small_padded.dcm": 1,
    "MR_truncated.dcm": "corrupt",
    "SC_jpeg_no_color_transform.dcm": 1,
    "SC_rgb_dcmtk_+eb+cy+np.dcm": 1,
    "SC_rgb_gdcm_KY.dcm": 1,
    "SC_rgb_jls_lossy_line.dcm": 1,
    "SC_rgb_jpeg_gdcm.dcm": 1,
    "SC_rgb_rle_16bit_2frame.dcm": 2,
    "SC_rgb_rle_32bit_2frame.dcm": 2,
    "SC_rgb_small_odd.dcm": "too_small",
    "SC_ybr_full_422_uncompressed.dcm": 1,
    "UN_sequence.dcm": "not_an_image",
    "badVR.dcm": "corrupt",  # Number of Frames "1A"
    "DICOMDIR": "not_an_image",
    "DICOMDIR-empty.dcm": "not_an_image",
    "examples_palette.dcm": 1,
    "examples_ybr_color.dcm": 30,
    "image_dfl.dcm": 1,  # deflated explicit VR
    "liver_expb_1frame.dcm": 1,
    "meta_missing_tsyntax.dcm": "corrupt",
    "no_meta.dcm": "not_an_image",
    "reportsi.dcm": "not_an_image",  # Basic Text SR
    "rtdose.dcm": "too_small",
    "rtplan_truncated.dcm": "not_an_image",
    "rtstruct.dcm": "not_an_image",
    "test-SR.dcm": "not_an_image",
    "waveform_ecg.dcm": "not_an_image",
}
LIMITS = DecodeLimits()


@pytest.fixture(autouse=True)
def salt(monkeypatch):
    monkeypatch.setenv(SALT_ENV, "test-salt")


def _outcome(name: str, data: bytes, config: ClinicalConfig | None = None):
    try:
        return len(decode_file(name, data, LIMITS, config).frames)
    except Quarantine as q:
        return q.reason


@pytest.mark.parametrize("name, expected", sorted(PYDICOM_FILES.items()))
def test_pydicom_test_files(name, expected):
    path = Path(get_testdata_file(name))
    assert _outcome(name, path.read_bytes()) == expected


def test_every_syntax_and_encoding_gives_the_same_pixels(tmp_path):
    """pydicom's MR_small in eight encodings; then a phantom written in five transfer syntaxes."""
    small = ["", "_RLE", "_bigendian", "_expb", "_implicit", "_jp2klossless", "_jpeg_ls_lossless"]
    images = [
        decode_file("x.dcm", Path(get_testdata_file(f"MR_small{s}.dcm")).read_bytes(), LIMITS)
        for s in [*small, "_padded"]
    ]
    first = images[0].frames[0].decoded.rgb
    assert first.std() > 20  # a real image, not a blank
    assert all(np.array_equal(i.frames[0].decoded.rgb, first) for i in images)
    grey = (np.asarray(make_phantom(phantom_rng(0, "yes", 0), True, 64))[..., 0]).astype(np.uint16)
    syntaxes = [None, ExplicitVRBigEndian, ImplicitVRLittleEndian, RLELossless]
    syntaxes.append(JPEG2000Lossless)  # (pydicom encodes JPEG-LS only with pyjpegls)
    decoded = []
    for i, syntax in enumerate(syntaxes):
        kw = {"syntax": syntax} if syntax else {}
        path = write_dicom(tmp_path / f"{i}.dcm", grey * 16, patient_id="P", **kw)
        decoded.append(decode_file(path.name, path.read_bytes(), LIMITS).frames[0].decoded.rgb)
    assert all(np.array_equal(d, decoded[0]) for d in decoded)


def test_window_rescale_and_monochrome1(tmp_path):
    """Slope/intercept first, then the file's window (first value), an override, or percentiles;
    MONOCHROME1 comes out inverted."""
    ramp = np.tile(np.arange(0, 1000, 10, dtype=np.uint16), (40, 1))  # 40 × 100, 0..990
    path = write_dicom(tmp_path / "w.dcm", ramp, slope=2.0, intercept=-500.0, window=(500, 1000))
    data = path.read_bytes()
    rgb = decode_file("w.dcm", data, LIMITS).frames[0].decoded.rgb[0, :, 0]
    values = ramp[0] * 2.0 - 500  # -500..1480, window 0..1000
    expected = np.rint(np.clip(values / 1000, 0, 1) * 255)
    assert np.array_equal(rgb, expected)
    wide = ClinicalConfig(window=(490, 1980))  # -500..1480: the whole range
    rgb = decode_file("w.dcm", data, LIMITS, wide).frames[0].decoded.rgb[0, :, 0]
    assert rgb[0] == 0 and rgb[-1] == 255 and np.all(np.diff(rgb.astype(int)) >= 0)
    plain = write_dicom(tmp_path / "p.dcm", ramp).read_bytes()  # no window: percentiles
    rgb = decode_file("p.dcm", plain, LIMITS).frames[0].decoded.rgb[0, :, 0]
    assert rgb[0] == 0 and rgb[-1] == 255 and 100 < rgb[50] < 155
    inverted = write_dicom(tmp_path / "m1.dcm", ramp, photometric="MONOCHROME1").read_bytes()
    rgb1 = decode_file("m1.dcm", inverted, LIMITS).frames[0].decoded.rgb[0, :, 0]
    assert np.array_equal(rgb1.astype(int), 255 - rgb.astype(int))


def test_frames_are_images_and_files_are_found_by_their_magic(tmp_path):
    rng = np.random.default_rng(0)
    tumors, frames = (
        np.stack(
            [make_phantom(phantom_rng(0, label, i), label == "yes", 48)[..., 0] for i in range(3)]
        )
        for label in ("yes", "no")
    )
    write_dicom(tmp_path / "yes" / "1.2.840.99.1", tumors[0], patient_id="A")  # UID name
    write_dicom(tmp_path / "yes" / "IM000001", tumors[1], patient_id="A")  # no extension
    write_dicom(tmp_path / "no" / "multi.dcm", frames, patient_id="B")
    (tmp_path / "no" / "notes").write_bytes(rng.bytes(300))  # neither: skipped
    listing = list_images(str(tmp_path))
    assert sorted(r.relpath for r in listing.images) == [
        "no/multi.dcm", "yes/1.2.840.99.1", "yes/IM000001",
    ]  # fmt: skip
    assert [s[0] for s in listing.skipped] == ["no/notes"]
    manifest = scan(listing)
    paths = [r.relpath for r in manifest.records]
    assert paths == [f"no/multi.dcm#frame={i}" for i in (1, 2, 3)] + listing_rest(listing)
    by_path = {r.relpath: r for r in manifest.records}
    assert by_path["yes/IM000001"].patient == by_path["yes/1.2.840.99.1"].patient
    assert by_path["yes/IM000001"].patient != by_path["no/multi.dcm#frame=1"].patient
    assert len({by_path[p].group for p in paths[:3]}) == 1  # one patient, one group
    summary = manifest.summary()
    assert summary["clinical"]["slices_per_patient"] == {"min": 2, "median": 2.5, "max": 3}
    assert not summary["pre_augmented"]  # one patient's slices are not copies of each other


def listing_rest(listing) -> list[str]:
    return sorted(r.relpath for r in listing.images if not r.relpath.startswith("no/"))


def test_a_syntax_without_decoder_and_a_missing_salt_say_what_to_do(tmp_path, monkeypatch):
    grey = np.full((40, 40), 100, np.uint8)
    path = write_dicom(tmp_path / "v.dcm", grey, patient_id="P")
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 video
    ds.PixelData = encapsulate([bytes(64)])
    ds.save_as(tmp_path / "video.dcm")
    with pytest.raises(Quarantine) as q:
        decode_file("video.dcm", (tmp_path / "video.dcm").read_bytes(), LIMITS)
    assert q.value.reason == "unsupported" and "MPEG2" in q.value.detail
    monkeypatch.delenv(SALT_ENV)
    with pytest.raises(UserError, match=f"{SALT_ENV} is not set"):
        decode_file("v.dcm", path.read_bytes(), LIMITS)
    anonymous = write_dicom(tmp_path / "a.dcm", grey).read_bytes()  # study UIDs still need it
    with pytest.raises(UserError, match=SALT_ENV):
        decode_file("a.dcm", anonymous, LIMITS)


@pytest.mark.slow
@pytest.mark.real_data
def test_real_scans_as_dicom_split_by_patient(real_data, tmp_path, capsys):
    """40 real scans as 10 patients of 4 slices: split keeps each patient's slices together,
    inspect counts patients, and a manifest's patient column can regroup them."""
    patient_of = {}
    for label, folder in (("yes", "yes"), ("no", "no")):
        for i, src in enumerate(sorted((real_data / folder).iterdir())[:20]):
            grey = np.asarray(Image.open(src).convert("L"))
            patient = f"{label.upper()}-{i // 4}"
            rel = f"{folder}/s{i:02d}.dcm"
            write_dicom(tmp_path / "scans" / rel, grey, patient_id=patient)
            patient_of[rel] = patient
    scans = str(tmp_path / "scans")
    assert main(["data", "inspect", scans, "--json"]) == 0
    clinical = json.loads(capsys.readouterr().out)["clinical"]
    assert (clinical["patients"], clinical["studies"], clinical["series"]) == (10, 40, 40)
    assert clinical["slices_per_patient"] == {"min": 4, "median": 4.0, "max": 4}
    args = ["data", "split", scans, "--folds", "3", "--test-fraction", "0.2", "--json"]
    assert main(args) == 0
    split = json.loads(capsys.readouterr().out)
    parts_of: dict[str, set[str]] = {}
    for part, files in split["members"].items():
        for f in files:
            parts_of.setdefault(patient_of[f], set()).add(part)
    assert len(parts_of) == 10 and all(len(p) == 1 for p in parts_of.values())
    assert split["leakage"] == 0
    assert not any(p in json.dumps(split) for p in patient_of.values())  # pseudonyms only
