"""Settings and shared rules for clinical scans: DICOM files and NIfTI volumes.

A clinical file holds one image or many (the frames of a multi-frame DICOM, the slices of a
volume) and a range of intensities far wider than 8 bits. Each becomes 8-bit images by one rule,
windowing: a linear map of [center - width/2, center + width/2] to 0..255, the window taken
from the settings (``window``), else from the DICOM file's own first Window Center/Width, else
from percentiles of the file's values (``percentiles``, over all its frames or the whole volume
so the slices of one scan keep one brightness scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from braintl.data.decode import Decoded

# A multi-frame file or a volume may hold this many times max_pixels in all (256 M voxels by
# default: a 512³ volume is 134 M); one frame or slice is held to max_pixels itself.
VOLUME_FACTOR = 4
# Keys of the tags a DICOM group may come from, and the names their pseudonyms carry.
DICOM_IDS = {
    "PatientID": "patient",
    "StudyInstanceUID": "study",
    "SeriesInstanceUID": "series",
    "SOPInstanceUID": "instance",
}
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # of a volume turned to RAS+ orientation
_SAMPLE = 1_000_000  # values a percentile window is estimated from


class ClinicalConfig(BaseModel):
    """How DICOM and NIfTI files become images and groups; part of the tensor cache key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: tuple[float, float] | None = Field(
        None, description="center,width for every file, overriding the files' own windows"
    )
    percentiles: tuple[float, float] = Field(
        (0.5, 99.5), description="window from these percentiles when a file names none"
    )
    dicom_group: tuple[str, ...] = Field(
        ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"),
        description="DICOM tags tried in order; the first present is the file's group",
    )
    slice_axis: Literal["axial", "coronal", "sagittal"] = "axial"
    slices: str = Field(
        "all",
        pattern=r"^(all|middle:[1-9][0-9]*|brain:(0(\.[0-9]+)?|1(\.0+)?))$",
        description="NIfTI slices kept: all, middle:K, or brain:F (head over F of the area)",
    )

    @field_validator("window")
    @classmethod
    def _width_positive(cls, window):
        if window is not None and window[1] <= 0:
            raise ValueError(f"window width {window[1]} must be > 0 (write it as center,width)")
        return window

    @field_validator("percentiles")
    @classmethod
    def _ordered(cls, p):
        if not 0 <= p[0] < p[1] <= 100:
            raise ValueError(f"percentiles {p}: need 0 <= low < high <= 100")
        return p

    @field_validator("dicom_group")
    @classmethod
    def _known_tags(cls, tags):
        unknown = [t for t in tags if t not in DICOM_IDS]
        if not tags or unknown:
            raise ValueError(f"dicom_group {list(tags)}: use one or more of {', '.join(DICOM_IDS)}")
        return tags


@dataclass(frozen=True)
class Identity:
    """Pseudonyms (``pseudonyms``) of where a file comes from; "" when unknown."""

    patient: str = ""
    study: str = ""
    series: str = ""
    instance: str = ""
    group: str = ""  # the file's default source group


@dataclass(frozen=True)
class Frame:
    suffix: str  # appended to the file's path: "" (one image), "#frame=3", "#slice=40"
    decoded: Decoded


@dataclass(frozen=True)
class FileImages:
    frames: tuple[Frame, ...]
    identity: Identity = Identity()


def window_bounds(
    config: ClinicalConfig, own: tuple[float, float] | None, values: np.ndarray
) -> tuple[float, float]:
    """(low, high) of the window: the setting, the file's own, or percentiles of ``values``."""
    center_width = config.window or own
    if center_width is not None:
        center, width = center_width
        return center - width / 2, center + width / 2
    flat = values.ravel()
    sample = flat[:: max(1, flat.size // _SAMPLE)].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(sample, config.percentiles)
    return float(low), float(max(high, low + 1e-6))


def to_uint8(values: np.ndarray, bounds: tuple[float, float], invert: bool = False) -> np.ndarray:
    """Window a 2-D array to grey 8-bit RGB (H×W×3); ``invert`` for MONOCHROME1."""
    low, high = bounds
    grey = np.clip((np.nan_to_num(values.astype(np.float64)) - low) / (high - low), 0.0, 1.0)
    grey = np.rint((1.0 - grey if invert else grey) * 255).astype(np.uint8)
    return np.ascontiguousarray(np.stack([grey, grey, grey], axis=-1))
