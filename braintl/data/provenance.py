"""Groups from provenance: which files come from one patient or one source scan, said by a name
pattern (``--group-by``) or a manifest CSV (``--manifest``).

Pixels cannot tell that two slices are one patient's, nor always that a heavily augmented copy
is its source's; the people who made the data can. A provenance group is joined with the
pixel groups (``duplicates``): a file's group is the union of both, so copies across patients
still merge. A joined group whose files carry different labels is a label conflict, as for
copies, and kept out.

The manifest (columns ``path,label,group``; ``patient`` is accepted for ``group``; paths
relative to DATA_URL) gives the labels instead of the folders. A broken manifest (unreadable,
a column missing, an empty path or label, a path twice, an unknown label, no row naming a
listed file) fails at once. Problems of single files never stop a run and are always
reported: a row whose file is not listed is skipped, a listed file without a row is
quarantined (``not_in_manifest``), a label that disagrees with the file's folder is
overruled by the manifest (the curated source). An empty group cell, like a path the pattern
does not match, leaves the file in its pixel group; with both options, the pattern fills the
manifest's empty cells.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from braintl.data.listing import ImageRef
from braintl.errors import UserError
from braintl.storage import resolve

GROUP = "group"
GROUP_COLUMNS = ("group", "patient")
NOT_IN_MANIFEST = "not_in_manifest"


def compile_group_by(text: str) -> re.Pattern:
    """The ``--group-by`` pattern, or a ``ValueError`` that says how to write it."""
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise ValueError(f"{text!r} is not a regular expression ({exc})") from None
    if GROUP not in pattern.groupindex:
        raise ValueError(
            f"{text!r} has no named group (?P<group>...): name the part of the path that "
            r"identifies the source, e.g. 'aug_(?P<group>.+?)_\d+_\d+\.'"
        )
    return pattern


def _checked_group_by(text: str | None) -> str | None:
    if text is not None:
        try:
            compile_group_by(text)
        except ValueError as exc:
            raise PydanticCustomError("bad_group_by", "{problem}", {"problem": str(exc)}) from None
    return text


# A field type, so DataConfig and RetrainParams refuse a bad pattern before any work.
GroupBy = Annotated[str | None, AfterValidator(_checked_group_by)]


@dataclass(frozen=True)
class Entry:
    """One manifest row."""

    label: str
    group: str
    line: int


@dataclass(frozen=True)
class Origin:
    """What provenance says of one listed file."""

    label: str
    group: str  # "" when none: the file keeps its pixel group
    in_manifest: bool = True


@dataclass(frozen=True)
class Provenance:
    """The ``--group-by`` pattern and the manifest's rows by path; empty: folders and pixels."""

    group_by: str | None = None
    manifest_url: str | None = None
    entries: dict[str, Entry] = field(default_factory=dict)

    def origin(self, ref: ImageRef) -> Origin:
        entry = self.entries.get(ref.relpath)
        if self.manifest_url and entry is None:
            return Origin(ref.label, "", in_manifest=False)
        group = entry.group if entry else ""
        if not group and self.group_by:
            match = compile_group_by(self.group_by).search(ref.relpath)
            group = (match and match.group(GROUP)) or ""
        return Origin(entry.label if entry else ref.label, group)

    def missing(self, listed: set[str]) -> list[dict]:
        """Manifest rows whose file is not among the listed images; none matching is an error."""
        rows = [{"path": p, "line": e.line} for p, e in self.entries.items() if p not in listed]
        if rows and len(rows) == len(self.entries):
            raise UserError(
                f"--manifest {self.manifest_url}: none of its {len(rows)} paths names a listed "
                f"image (first: {rows[0]['path']!r}); write paths relative to DATA_URL, "
                f"e.g. {min(listed)!r}"
            )
        return rows


def manifest_bytes(url: str) -> bytes:
    location = resolve(url)
    if not location.exists():
        raise UserError(f"--manifest {url} does not exist: give the CSV's path or URL")
    return location.read_bytes()


def read_provenance(
    group_by: str | None, manifest_url: str | None, label_map: dict[str, str]
) -> Provenance:
    entries: dict[str, Entry] = {}
    if manifest_url:
        entries = read_manifest(manifest_bytes(manifest_url), manifest_url, label_map)
    return Provenance(group_by, manifest_url, entries)


def read_manifest(data: bytes, source: str, label_map: dict[str, str]) -> dict[str, Entry]:
    """Rows by path. Labels may be written as labels or as their folders' names."""
    try:
        text = data.decode("utf-8-sig")  # a BOM, as spreadsheet programs write it
    except UnicodeDecodeError as exc:
        raise UserError(f"--manifest {source}: not UTF-8 text ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
    group_column = next((columns[c] for c in GROUP_COLUMNS if c in columns), None)
    if "path" not in columns or "label" not in columns or group_column is None:
        raise UserError(
            f"--manifest {source}: needs the columns path,label,group (or patient); found "
            f"{', '.join(reader.fieldnames or []) or 'none'}"
        )
    labels = set(label_map.values())
    entries: dict[str, Entry] = {}
    for line, row in enumerate(reader, start=2):
        path = (row[columns["path"]] or "").strip().removeprefix("./")
        label = (row[columns["label"]] or "").strip()
        label = label_map.get(label, label)
        where = f"--manifest {source}, line {line}"
        if not path or not label:
            raise UserError(f"{where}: empty path or label")
        if label not in labels:
            raise UserError(f"{where}: label {label!r} unknown; use {', '.join(sorted(labels))}")
        if path in entries:
            raise UserError(f"{where}: {path!r} again (first on line {entries[path].line})")
        entries[path] = Entry(label, (row[group_column] or "").strip(), line)
    return entries
