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

from braintl.data.decode import (
    TOO_LARGE,
    UNREADABLE,
    Decoded,
    DecodeLimits,
    Quarantine,
    decode,
    too_many_bytes,
)
from braintl.data.duplicates import (
    DEFAULT_NEAR_DISTANCE,
    copy_stats,
    find_groups,
    perceptual_hash,
    pixel_hash,
)
from braintl.data.listing import ImageRef, Listing
from braintl.data.provenance import NOT_IN_MANIFEST, Provenance
from braintl.data.signature import CONTRADICTS, COPY_DISTANCE, SIZE, signature
from braintl.limits import decode_workers
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
    provenance: str = ""  # the file's provenance group (``provenance``); "" when none


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
    provenance_pairs: list[tuple[int, int]] = field(default_factory=list)
    # group_by, manifest_url, missing rows, label disagreements (see ``scan``)
    provenance: dict = field(default_factory=dict)

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
        named_in = {self.records[i].group for i, _ in self.provenance_pairs}
        out = []
        for g, idx in sorted(members.items()):
            if len(idx) < 2:
                continue
            joined_by = (
                ("exact", exact_in),
                ("near", near_in),
                ("transformed", copy_in),
                ("provenance", named_in),
            )
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
            "provenance": self.provenance_summary(),
            "pre_augmented": copies["pre_augmented"],
            "copy_stats": copies,
            "duplicate_groups": [g for g in groups if not g["conflict"]],
            "label_conflicts": [g for g in groups if g["conflict"]],
            "fingerprint": self.fingerprint,
            "seconds": round(self.seconds, 3),
        }

    def provenance_summary(self) -> dict | None:
        """Provenance groups among the decoded files, and the manifest's problems; None
        without ``--group-by`` or ``--manifest``."""
        if not self.provenance:
            return None
        decoded = [r for r in self.records if r.group >= 0]
        per_group = Counter(r.provenance for r in decoded if r.provenance)
        sizes = sorted(per_group.values()) or [0]
        summary = {
            **{k: self.provenance[k] for k in ("group_by", "manifest_url")},
            "groups": len(per_group),
            "files_per_group": {
                "min": sizes[0],
                "median": float(np.median(sizes)),
                "max": sizes[-1],
            },
            "ungrouped": sum(not r.provenance for r in decoded),
        }
        if self.provenance["manifest_url"]:
            summary |= {
                "missing_files": self.provenance["missing"],
                "not_in_manifest": [r.relpath for r in self.records if r.reason == NOT_IN_MANIFEST],
                "label_disagreements": self.provenance["label_disagreements"],
            }
        return summary

    def notes(self) -> list[str]:
        """What a log should say about this data: pre-augmented, a too loose near distance,
        files the provenance leaves out or overrules."""
        summary = self.summary()
        notes = [pre_augmented_note(summary), summary["near_distance_warning"]]
        return [n for n in notes + provenance_notes(summary["provenance"]) if n]

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
            "provenance_pairs": [list(p) for p in self.provenance_pairs],
            "provenance": self.provenance,
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


def provenance_notes(provenance: dict | None) -> list[str]:
    """One line per kind of file that provenance leaves out, overrules or cannot place."""
    if provenance is None:
        return []

    def some(items: list, show=str) -> str:
        return ", ".join(show(i) for i in items[:3]) + (", ..." if len(items) > 3 else "")

    notes = []
    if provenance["ungrouped"]:
        notes.append(
            f"{provenance['ungrouped']} file(s) have no provenance group (--group-by did not "
            "match, or an empty group cell): each keeps its pixel group"
        )
    missing = provenance.get("missing_files", [])
    if missing:
        notes.append(
            f"--manifest: {len(missing)} row(s) name files that are not listed images, skipped: "
            + some(missing, lambda m: f"{m['path']} (line {m['line']})")
        )
    unlisted = provenance.get("not_in_manifest", [])
    if unlisted:
        notes.append(f"{len(unlisted)} file(s) not in --manifest, quarantined: {some(unlisted)}")
    disagree = provenance.get("label_disagreements", [])
    if disagree:
        notes.append(
            f"--manifest relabels {len(disagree)} file(s) against their folder (the manifest's "
            "label is used): "
            + some(disagree, lambda d: f"{d['file']} {d['folder']} -> {d['manifest']}")
        )
    return notes


def fingerprint(records: list[Record]) -> str:
    """Hash of (pixel content, label, provenance group when given) of the usable images:
    blind to names, order, location."""
    lines = sorted(
        f"{r.pixel_hash}:{r.label}" + (f":{r.provenance}" if r.provenance else "")
        for r in records
        if r.status == OK
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def scan(
    listing: Listing,
    limits: DecodeLimits | None = None,
    near_distance: int = DEFAULT_NEAR_DISTANCE,
    copy_distance: float = COPY_DISTANCE,
    on_image: Callable[[int, Decoded], None] | None = None,
    workers: int | None = None,
    provenance: Provenance | None = None,
    memory_budget_gb: float | None = None,
) -> Manifest:
    """Decode, check and hash every listed file, then group duplicates and provenance.

    Unusable files are quarantined with a reason and never stop the scan; storage that
    cannot be reached stops it (:class:`~braintl.storage.StorageError`). A file the listing
    sizes over ``limits.max_bytes`` is never read, and no read returns more than that plus
    one byte (a file can grow after listing); as many threads decode at once as the memory
    budget holds at the limits' worst case (:func:`~braintl.limits.decode_workers`).
    """
    provenance = provenance or Provenance()
    missing = provenance.missing({ref.relpath for ref in listing.images})
    if near_distance < -1:
        raise ValueError(f"near_distance={near_distance}: use -1 (off) or a number of bits >= 0")
    limits = limits or DecodeLimits()
    start = time.perf_counter()
    workers = workers or decode_workers(
        limits.peak_bytes(), memory_budget_gb, min(8, (os.cpu_count() or 1) + 2)
    )

    def one(item: tuple[int, ImageRef]) -> tuple[Record, np.ndarray | None]:
        index, ref = item
        origin = provenance.origin(ref)
        record = Record(ref.relpath, origin.label, ref.size, provenance=origin.group)
        if not origin.in_manifest:
            detail = f"no row for this file in {provenance.manifest_url}"
            return _quarantine(record, Quarantine(NOT_IN_MANIFEST, detail)), None
        if ref.size > limits.max_bytes:
            return _quarantine(
                record, Quarantine(TOO_LARGE, too_many_bytes(ref.size, limits))
            ), None
        try:
            data = resolve(ref.url).read_bytes(limits.max_bytes)
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
        [records[i].provenance for i in ok],
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
        provenance_pairs=[(ok[a], ok[b]) for a, b in groups.provenance_pairs],
    )
    if provenance.group_by or provenance.manifest_url:
        manifest.provenance = {
            "group_by": provenance.group_by,
            "manifest_url": provenance.manifest_url,
            "missing": missing,
            "label_disagreements": [
                {"file": ref.relpath, "folder": ref.label, "manifest": r.label}
                for ref, r in zip(listing.images, records, strict=True)
                if r.label != ref.label
            ],
        }
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
