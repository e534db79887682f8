"""The manifest: every listed file decoded once, checked, hashed and placed in a source group.

One pass over the data does everything that needs pixels; a caller that also wants the
pixels (``prepare``, to build tensors) receives each decoded image through ``on_image``
instead of decoding a second time. Signatures (``duplicates``: transformed copies) live only
for the grouping: 3 kB an image would dwarf the rest of the manifest.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from braintl.data.decode import UNREADABLE, Decoded, DecodeLimits, Quarantine, decode
from braintl.data.duplicates import (
    DEFAULT_NEAR_DISTANCE,
    copy_stats,
    find_groups,
    perceptual_hash,
    pixel_hash,
)
from braintl.data.listing import ImageRef, Listing
from braintl.data.signature import CONTRADICTS, COPY_DISTANCE, SIZE, signature
from braintl.storage import resolve

OK = "ok"
QUARANTINED = "quarantined"
LABEL_CONFLICT = "label_conflict"


@dataclass
class Record:
    relpath: str
    label: str
    bytes: int
    status: str = OK
    reason: str = ""
    detail: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    pixel_hash: str = ""
    phash: str = ""
    group: int = -1


@dataclass
class Manifest:
    root: str
    records: list[Record]
    skipped: list[tuple[str, str]]
    near_distance: int
    exact_pairs: list[tuple[int, int]] = field(default_factory=list)
    near_pairs: list[tuple[int, int, int]] = field(default_factory=list)
    fingerprint: str = ""
    seconds: float = 0.0
    copy_distance: float = COPY_DISTANCE
    copy_pairs: list[tuple[int, int, float]] = field(default_factory=list)
    contradicted_pairs: list[tuple[int, int, int, float]] = field(default_factory=list)

    def usable(self) -> np.ndarray:
        """Indices of records that may be trained on or evaluated."""
        return np.array([i for i, r in enumerate(self.records) if r.status == OK], dtype=np.int64)

    def duplicate_groups(self) -> list[dict]:
        """Groups of more than one file, each with its members and how they were joined."""
        members: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(self.records):
            if r.group >= 0:
                members[r.group].append(i)
        exact_in = {self.records[i].group for i, _ in self.exact_pairs}
        near_in = {self.records[i].group for i, _, _ in self.near_pairs}
        copy_in = {self.records[i].group for i, _, _ in self.copy_pairs}
        out = []
        for g, idx in sorted(members.items()):
            if len(idx) < 2:
                continue
            joined_by = (("exact", exact_in), ("near", near_in), ("transformed", copy_in))
            kinds = [k for k, s in joined_by if g in s]
            labels = sorted({self.records[i].label for i in idx})
            out.append(
                {
                    "group": g,
                    "kind": "+".join(kinds),
                    "labels": labels,
                    "conflict": len(labels) > 1,
                    "members": [self.records[i].relpath for i in idx],
                }
            )
        return out

    def summary(self) -> dict:
        by_label = Counter(r.label for r in self.records)
        usable = Counter(r.label for r in self.records if r.status == OK)
        groups = self.duplicate_groups()
        copies = copy_stats(np.array([r.group for r in self.records if r.group >= 0], np.int64))
        contradicted = [
            {"files": [self.records[i].relpath, self.records[j].relpath], "bits": d, "signature": s}
            for i, j, d, s in self.contradicted_pairs
        ]
        return {
            "root": self.root,
            "files": len(self.records),
            "per_label": dict(sorted(by_label.items())),
            "usable_per_label": dict(sorted(usable.items())),
            "groups": len({r.group for r in self.records if r.status == OK}),
            "quarantined": [
                {"file": r.relpath, "reason": r.reason, "detail": r.detail}
                for r in self.records
                if r.status == QUARANTINED
            ],
            "skipped": [{"file": f, "reason": why} for f, why in self.skipped],
            "exact_duplicate_pairs": len(self.exact_pairs),
            "near_duplicate_pairs": len(self.near_pairs),
            "near_distance": self.near_distance,
            "transformed_copy_pairs": len(self.copy_pairs),
            "copy_distance": self.copy_distance,
            "contradicted_near_pairs": contradicted,
            "near_distance_warning": near_distance_warning(self.near_distance, contradicted),
            "pre_augmented": copies["pre_augmented"],
            "copy_stats": copies,
            "duplicate_groups": [g for g in groups if not g["conflict"]],
            "label_conflicts": [g for g in groups if g["conflict"]],
            "fingerprint": self.fingerprint,
            "seconds": round(self.seconds, 3),
        }

    def notes(self) -> list[str]:
        """What a log should say about this data: pre-augmented, a too loose near distance."""
        summary = self.summary()
        return [n for n in (pre_augmented_note(summary), summary["near_distance_warning"]) if n]

    def to_json(self) -> dict:
        return {
            "root": self.root,
            "near_distance": self.near_distance,
            "fingerprint": self.fingerprint,
            "seconds": self.seconds,
            "skipped": [list(s) for s in self.skipped],
            "exact_pairs": [list(p) for p in self.exact_pairs],
            "near_pairs": [list(p) for p in self.near_pairs],
            "copy_distance": self.copy_distance,
            "copy_pairs": [list(p) for p in self.copy_pairs],
            "contradicted_pairs": [list(p) for p in self.contradicted_pairs],
            "records": [asdict(r) for r in self.records],
        }


def near_distance_warning(near_distance: int, contradicted: list[dict]) -> str | None:
    """Why a loose ``--near-distance`` is not silently trusted (see ``duplicates``)."""
    if not contradicted:
        return None
    worst = max(contradicted, key=lambda p: p["signature"])
    return (
        f"--near-distance {near_distance} admits {len(contradicted)} pair(s) of images that "
        f"look different once flips, rotations, shifts and zoom are undone (signature distance "
        f"> {CONTRADICTS}, e.g. {' and '.join(worst['files'])}: {worst['bits']} bits, signature "
        f"{worst['signature']}); they were kept apart. The threshold is probably too loose for "
        "this data: lower it (46 suits brain_mri, where different scans begin at 54 bits)."
    )


def pre_augmented_note(summary: dict) -> str | None:
    """One line for logs when a folder looks augmented already (``copy_stats``)."""
    stats = summary["copy_stats"]
    if not stats["pre_augmented"]:
        return None
    return (
        f"{summary['root']} looks pre-augmented: {stats['images_in_groups']:.0%} of the images "
        f"are copies of another (median group size {stats['median_group_size']:g}, "
        f"{summary['groups']} source groups); splits keep each group whole, but a model sees "
        "few distinct scans"
    )


def fingerprint(records: list[Record]) -> str:
    """Hash of (pixel content, label) of the usable images: blind to names, order, location."""
    lines = sorted(f"{r.pixel_hash}:{r.label}" for r in records if r.status == OK)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def scan(
    listing: Listing,
    limits: DecodeLimits | None = None,
    near_distance: int = DEFAULT_NEAR_DISTANCE,
    copy_distance: float = COPY_DISTANCE,
    on_image: Callable[[int, Decoded], None] | None = None,
    workers: int | None = None,
) -> Manifest:
    """Decode, check and hash every listed file, then group duplicates.

    Unusable files are quarantined with a reason and never stop the scan; storage that
    cannot be reached stops it (:class:`~braintl.storage.StorageError`).
    """
    if near_distance < -1:
        raise ValueError(f"near_distance={near_distance}: use -1 (off) or a number of bits >= 0")
    limits = limits or DecodeLimits()
    start = time.perf_counter()
    workers = workers or min(8, (os.cpu_count() or 1) + 2)

    def one(item: tuple[int, ImageRef]) -> tuple[Record, np.ndarray | None]:
        index, ref = item
        record = Record(relpath=ref.relpath, label=ref.label, bytes=ref.size)
        try:
            data = resolve(ref.url).read_bytes()
        except PermissionError as exc:
            return _quarantine(record, Quarantine(UNREADABLE, f"permission denied ({exc})")), None
        except (FileNotFoundError, IsADirectoryError) as exc:
            detail = f"listed, but gone or not a file when read ({type(exc).__name__})"
            return _quarantine(record, Quarantine(UNREADABLE, detail)), None
        try:
            decoded = decode(data, limits)
        except Quarantine as q:
            return _quarantine(record, q), None
        record.width, record.height = decoded.rgb.shape[1], decoded.rgb.shape[0]
        record.mode, record.format = decoded.mode, decoded.format
        record.pixel_hash = pixel_hash(decoded.rgb)
        record.phash = perceptual_hash(decoded.rgb)
        if on_image is not None:
            on_image(index, decoded)
        return record, signature(decoded.rgb)

    with ThreadPoolExecutor(workers) as pool:
        scanned = list(pool.map(one, enumerate(listing.images)))
    records = [record for record, _ in scanned]
    ok = [i for i, r in enumerate(records) if r.status == OK]
    groups = find_groups(
        [records[i].pixel_hash for i in ok],
        [records[i].phash for i in ok],
        near_distance,
        np.array([scanned[i][1] for i in ok], dtype=np.float32).reshape(len(ok), SIZE),
        copy_distance,
    )
    for local, i in enumerate(ok):
        records[i].group = int(groups.group[local])
    _mark_conflicts(records)
    manifest = Manifest(
        root=listing.root,
        records=records,
        skipped=list(listing.skipped),
        near_distance=near_distance,
        exact_pairs=[(ok[a], ok[b]) for a, b in groups.exact_pairs],
        near_pairs=[(ok[a], ok[b], d) for a, b, d in groups.near_pairs],
        copy_distance=copy_distance,
        copy_pairs=[(ok[a], ok[b], d) for a, b, d in groups.copy_pairs],
        contradicted_pairs=[(ok[a], ok[b], d, s) for a, b, d, s in groups.contradicted_pairs],
    )
    manifest.fingerprint = fingerprint(records)
    manifest.seconds = time.perf_counter() - start
    return manifest


def _quarantine(record: Record, q: Quarantine) -> Record:
    record.status, record.reason, record.detail = QUARANTINED, q.reason, q.detail
    return record


def _mark_conflicts(records: list[Record]) -> None:
    """A group whose copies carry different labels cannot be trusted for either label."""
    labels: dict[int, set[str]] = defaultdict(set)
    for r in records:
        if r.group >= 0:
            labels[r.group].add(r.label)
    for r in records:
        if r.group >= 0 and len(labels[r.group]) > 1:
            r.status, r.reason = LABEL_CONFLICT, "copies of this image carry different labels"
            r.detail = ", ".join(sorted(labels[r.group]))
