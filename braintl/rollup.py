"""A study-level answer from slice-level predictions: one row per patient (or study), its
probability the maximum over its scored images.

Why the maximum: one slice showing a tumor makes the study positive, whatever the other slices
show. Its cost: every slice is another chance of a false positive, so the more slices a patient
has, the more often a tumor-free patient is called positive at a threshold chosen per slice.

Patients and studies are the DICOM files' salted pseudonyms (``pseudonyms``), never their
identifiers; an image without one (a plain image file, a NIfTI volume, a DICOM lacking the tag)
is its own file's, so a volume rolls up to one row.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from braintl.errors import UserError
from braintl.predict import FRAME, Predictions
from braintl.publish import label_at
from braintl.storage import resolve

ROLLUPS = ("patient", "study")
Rollup = Literal["patient", "study"]


@dataclass(frozen=True)
class RolledUp:
    key: str  # the patient's or study's pseudonym, else the file
    probability: float  # the maximum over its images
    label: str  # at the model's threshold
    slices: int  # images scored
    top: str  # the image of the maximum: where to look first


def rollup(result: Predictions, by: Rollup) -> list[RolledUp]:
    """One row per ``by`` in the order first met, from ``result``'s scored images (unreadable
    ones belong to no one: their file could not be read)."""
    if by not in ROLLUPS:
        raise UserError(f"roll-up by {by!r}: use one of {', '.join(ROLLUPS)}")
    images: dict[str, list] = {}
    for row in result.rows:
        key = getattr(row, by) or FRAME.sub("", row.file)
        images.setdefault(key, []).append(row)
    rolled = []
    for key, rows in images.items():
        top = max(rows, key=lambda r: r.probability)
        label = label_at(top.probability, result.threshold)
        rolled.append(RolledUp(key, top.probability, label, len(rows), top.file))
    return rolled


def rollup_csv(rows: Sequence[RolledUp], by: Rollup) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow((by, "probability", "label", "slices", "top"))
    for row in rows:
        writer.writerow([row.key, f"{row.probability:.6f}", row.label, row.slices, row.top])
    return buffer.getvalue()


def rollup_json(rows: Sequence[RolledUp], by: Rollup) -> list[dict]:
    return [{by: r.key} | {k: v for k, v in asdict(r).items() if k != "key"} for r in rows]


def rollup_url(csv_url: str, by: Rollup) -> str:
    """Where the roll-up of the rows at ``csv_url`` goes: ``x.csv`` → ``x.<by>.csv`` beside it."""
    location = resolve(csv_url)
    stem, ext = posixpath.splitext(location.url)
    return resolve(f"{stem}.{by}{ext or '.csv'}").url
