"""Which decoder reads a file: NIfTI by extension, DICOM by extension or by its DICM magic,
everything else as a plain image (``decode``).

The DICOM and NIfTI decoders are imported when a file needs them: pydicom and nibabel take
longer to import than a folder of JPEGs takes to decode."""

from __future__ import annotations

from braintl.data.clinical import ClinicalConfig, FileImages, Frame
from braintl.data.decode import EMPTY, TOO_LARGE, DecodeLimits, Quarantine, decode, too_many_bytes

DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
CLINICAL_EXTENSIONS = DICOM_EXTENSIONS + NIFTI_EXTENSIONS


def is_dicom(head: bytes) -> bool:
    """The DICM magic after the 128-byte preamble, as PS3.10 files carry it."""
    return head[128:132] == b"DICM"


def decode_file(
    name: str, data: bytes, limits: DecodeLimits, config: ClinicalConfig | None = None
) -> FileImages:
    """Every image in the file named ``name``, or :class:`~braintl.data.decode.Quarantine`."""
    config = config or ClinicalConfig()
    lower = name.lower()
    if not data:
        raise Quarantine(EMPTY, "zero bytes")
    if len(data) > limits.max_bytes:
        raise Quarantine(TOO_LARGE, too_many_bytes(len(data), limits))
    if lower.endswith(NIFTI_EXTENSIONS):
        from braintl.data.nifti import decode_volume

        return decode_volume(data, limits, config)
    if lower.endswith(DICOM_EXTENSIONS) or is_dicom(data):
        from braintl.data.dicom import decode_dicom

        return decode_dicom(data, limits, config)
    return FileImages((Frame("", decode(data, limits)),))
