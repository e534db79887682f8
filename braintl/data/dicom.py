"""DICOM files (with pydicom) as images: windowed, one per frame, grouped by pseudonymous patient.

Any transfer syntax pydicom decodes is read: uncompressed little/big endian, explicit or implicit
VR natively; JPEG, JPEG-LS, JPEG 2000 and RLE through the plugins of the ``dicom`` extra
(pylibjpeg and its codecs). Greyscale pixels get the modality rescale (slope, intercept), then
the window (``clinical``), MONOCHROME1 inverted so bone and tissue are bright as in MONOCHROME2;
colour pixels come as RGB (pydicom converts YBR) scaled from their bit depth. Everything else is
quarantined with its reason before any pixel is decoded where the header tells: a DICOMDIR, an
object without pixel data (reports, presentation states), a syntax without a decoder, frames
beyond the size limits; truncated pixel data when decoding.

pydicom's warnings and log lines quote element values, identifiers among them, so they are
silenced; a file's identifiers leave this module only as pseudonyms (``pseudonyms``).
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from braintl.data.clinical import (
    DICOM_IDS,
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
from braintl.data.pseudonyms import pseudonym

logging.getLogger("pydicom").disabled = True  # its messages quote identifying values
DICOMDIR = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
EXTRA = "pip install 'braintl[dicom]'"


def decode_dicom(data: bytes, limits: DecodeLimits, config: ClinicalConfig) -> FileImages:
    """Every frame of a DICOM file as 8-bit RGB, or :class:`Quarantine` with the reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on broken files
            raise Quarantine(CORRUPT, f"unreadable DICOM ({type(exc).__name__})") from None
        syntax = _transfer_syntax(ds)
        rows, cols, frames = _check_header(ds, limits, syntax)
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # noqa: BLE001
            raise Quarantine(
                CORRUPT, f"pixel data truncated or corrupt ({type(exc).__name__}: {exc})"
            ) from None
        mode = str(ds.get("PhotometricInterpretation", ""))
        if mode == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, ds)
        pixels = pixels.reshape(frames, rows, cols, -1)
        if pixels.shape[-1] == 1:
            images = _greyscale(ds, pixels[..., 0], config)
        else:
            images = _colour(
                pixels, 16 if mode == "PALETTE COLOR" else int(ds.get("BitsStored") or 8)
            )
    out = tuple(
        Frame(f"#frame={i + 1}" if frames > 1 else "", Decoded(rgb, "DICOM", mode))
        for i, rgb in enumerate(images)
    )
    return FileImages(out, _identity(ds, config))


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    """The file's transfer syntax; a file without meta information gets the one it was read in."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        implicit, little = ds.original_encoding
        syntax = (
            ImplicitVRLittleEndian
            if implicit
            else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        )
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    return UID(str(syntax))


def _check_header(ds: pydicom.Dataset, limits: DecodeLimits, syntax: UID) -> tuple[int, int, int]:
    """Rows, columns and frames, or the reason the pixels will not be decoded."""
    meta = getattr(ds, "file_meta", {})
    if meta.get("MediaStorageSOPClassUID") == DICOMDIR or "DirectoryRecordSequence" in ds:
        raise Quarantine(NOT_AN_IMAGE, "a DICOMDIR (index of a DICOM medium), not an image")
    if "PixelData" not in ds:
        sop = ds.get("SOPClassUID")
        what = UID(str(sop)).name if sop else "unknown SOP class"
        raise Quarantine(NOT_AN_IMAGE, f"DICOM without pixel data ({what})")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise Quarantine(
            CORRUPT, f"DICOM image without valid Rows/Columns/Number of Frames ({exc})"
        ) from None
    if rows * cols > limits.max_pixels or rows * cols * frames > VOLUME_FACTOR * limits.max_pixels:
        raise Quarantine(
            TOO_LARGE,
            f"declares {frames} frame(s) of {cols}×{rows} px, over the limit of "
            f"{limits.max_pixels} px a frame and {VOLUME_FACTOR}× that a file (raise max_pixels "
            "if this is a real scan)",
        )
    if min(rows, cols) < limits.min_side:
        raise Quarantine(
            TOO_SMALL, f"{cols}×{rows} px, under the minimum of {limits.min_side} px a side"
        )
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise Quarantine(
            UNSUPPORTED, f"no DICOM decoder exists for transfer syntax {syntax.name}"
        ) from None
    if not decoder.is_available:
        raise Quarantine(
            UNSUPPORTED,
            f"transfer syntax {syntax.name} needs a decoder plugin that is not installed ({EXTRA})",
        )
    return rows, cols, frames


def _greyscale(ds: pydicom.Dataset, frames: np.ndarray, config: ClinicalConfig) -> list[np.ndarray]:
    sample = apply_modality_lut(frames[:: max(1, len(frames) // 16)], ds)
    bounds = window_bounds(config, _own_window(ds), sample)
    invert = ds.get("PhotometricInterpretation") == "MONOCHROME1"
    return [to_uint8(apply_modality_lut(frame, ds), bounds, invert) for frame in frames]


def _own_window(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """The first Window Center and Width of the file, when it has both and the width is > 0."""
    try:
        center, width = (ds.get(k) for k in ("WindowCenter", "WindowWidth"))
        if center is None or width is None:
            return None
        first = [
            float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)
            for v in (center, width)
        ]
    except (TypeError, ValueError, IndexError):
        return None
    return (first[0], first[1]) if first[1] > 0 else None


def _colour(frames: np.ndarray, bits: int) -> list[np.ndarray]:
    """RGB frames scaled from their bit depth to 8 bits (not stretched per image); palette
    lookups give 16-bit colours."""
    scale = 255.0 / (2**bits - 1)
    return [
        np.ascontiguousarray(
            np.clip(np.rint(f.astype(np.float64) * scale), 0, 255).astype(np.uint8)
        )
        for f in frames
    ]


def _identity(ds: pydicom.Dataset, config: ClinicalConfig) -> Identity:
    """Pseudonyms of the file's identifiers; its group from the first present tag of
    ``dicom_group``."""
    ids = {
        name: pseudonym(name, str(value).strip())
        for key, name in DICOM_IDS.items()
        if (value := ds.get(key)) is not None and str(value).strip()
    }
    group = next((ids[DICOM_IDS[t]] for t in config.dicom_group if DICOM_IDS[t] in ids), "")
    return Identity(**ids, group=group)
