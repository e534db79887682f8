"""DICOM files written with pydicom for tests: real scans or phantoms with chosen identifiers,
rescale, window, photometric interpretation, transfer syntax and frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def write_dicom(
    path: Path,
    grey: np.ndarray,
    *,
    patient_id: str = "",
    patient_name: str = "",
    birth_date: str = "",
    study_uid: str | None = None,
    series_uid: str | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    photometric: str = "MONOCHROME2",
    syntax: str = ExplicitVRLittleEndian,
) -> Path:
    """Write ``grey`` (H×W, or F×H×W for a multi-frame file; uint8 or uint16) as an MR image."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "MR"
    if patient_id:
        ds.PatientID = patient_id
    if patient_name:
        ds.PatientName = patient_name
    if birth_date:
        ds.PatientBirthDate = birth_date
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    bits = 8 * grey.dtype.itemsize
    ds.set_pixel_data(grey, photometric, bits)
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax) if syntax.is_compressed else _transcode(ds, syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _transcode(ds: Dataset, syntax) -> None:
    """Big-endian or implicit VR: pydicom writes the elements in the syntax named in the meta."""
    if syntax.is_little_endian is False:
        pixels = ds.pixel_array
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
    ds.file_meta.TransferSyntaxUID = syntax
