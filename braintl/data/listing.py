"""Find the labelled images under a data URL: one sub-folder per label, searched recursively.

Images are found by extension (plain images, DICOM, NIfTI); a file with any other extension is
read for 132 bytes to find the DICM magic, since PACS exports often name files by UID or not at
all.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from braintl.data.formats import CLINICAL_EXTENSIONS, is_dicom
from braintl.errors import UserError
from braintl.storage import Location, StorageError, resolve
from braintl.urls import credentials_problem

DEFAULT_LABEL_MAP: dict[str, str] = {"yes": "tumor", "no": "no_tumor"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff")
SCAN_EXTENSIONS = IMAGE_EXTENSIONS + CLINICAL_EXTENSIONS
# Files every OS and tool drops into folders; never images, never worth a quarantine line.
IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
POSITIVE_LABEL = "tumor"
_LINK = "symbolic link, not followed (copy the file in instead)"
# Object stores allow keys such as "yes/../../other/x.jpg"; read as paths they name other objects.
_BAD_KEY = "key has an empty, '.' or '..' path component (it could name another object); rename it"


@dataclass(frozen=True)
class ImageRef:
    """One file found under the data URL."""

    url: str
    relpath: str  # relative to the data root, e.g. "yes/Y1.jpg"
    folder: str  # the label folder's name
    label: str  # the label it maps to
    size: int  # bytes


@dataclass(frozen=True)
class Listing:
    root: str
    images: tuple[ImageRef, ...]
    skipped: tuple[tuple[str, str], ...]  # (relpath, reason) for non-image files


def label_index(label: str) -> int:
    """Binary target: 1 for the positive (tumor) label, else 0."""
    return int(label == POSITIVE_LABEL)


def list_images(
    data_url: str, label_map: dict[str, str] | None = None, max_images: int | None = None
) -> Listing:
    """List image files in ``DATA_URL/<folder>/**`` and map each folder to its label.

    Raises :class:`UserError` naming the fix when the URL is missing or empty, a label
    folder is not in the label map, fewer than two labels have images, or the label folders
    hold more than ``max_images`` files: listing stops at the first file over, so pointing
    DATA_URL at a whole bucket fails in one page of listing, not after all of it.
    """
    label_map = dict(DEFAULT_LABEL_MAP if label_map is None else label_map)
    problem = credentials_problem("DATA_URL", data_url)
    if problem:
        raise UserError(f"{problem}.")
    root = resolve(data_url)
    folders, outside = _label_folders(root)
    unknown = sorted(set(folders) - set(label_map))
    if unknown:
        raise UserError(
            f"{root.url}: folder(s) {', '.join(map(repr, unknown))} not in the label map "
            f"{label_map}. Rename them, remove them, or pass a label map that names them "
            "(--label-map folder=label,...)."
        )
    images: list[ImageRef] = []
    skipped: list[tuple[str, str]] = list(outside)
    listed = 0
    for folder in sorted(folders):
        limit = None if max_images is None else max_images + 1 - listed
        files = _walk(root.join(folder), limit)
        listed += len(files)
        if max_images is not None and listed > max_images:
            raise UserError(
                f"{root.url}: more than max_images={max_images} files in the label folders "
                "(listing stopped there). Check that DATA_URL points at the data set and not a "
                "whole bucket; for a set this large raise max_images (--max-images)."
            )
        for path, size, islink in files:
            rel = path.removeprefix(root.path.rstrip("/") + "/")
            name = posixpath.basename(path)
            if name.lower() in IGNORED_NAMES or name.startswith("._"):
                continue
            if _moves(rel):
                skipped.append((rel, _BAD_KEY))
                continue
            if islink:
                skipped.append((rel, _LINK))
                continue
            if not is_scan(root, path):
                why = f"not an image extension ({', '.join(SCAN_EXTENSIONS)}) nor DICOM"
                skipped.append((rel, why))
                continue
            url = root.join(rel).url
            images.append(ImageRef(url, rel, folder, label_map[folder], size))
    labels = {ref.label for ref in images}
    if len(labels) < 2:
        found = ", ".join(sorted(labels)) or "none"
        raise UserError(
            f"{root.url}: images of fewer than two labels found (labels with images: {found}). "
            f"Put images in at least two label folders: {', '.join(sorted(label_map))}."
        )
    return Listing(root.url, tuple(images), tuple(skipped))


def _label_folders(root: Location) -> tuple[list[str], list[tuple[str, str]]]:
    """Label folder names, and (name, reason) for the other entries at the top.

    A linked label folder is not followed either: it can point anywhere.
    """
    try:
        if not root.fs.isdir(root.path):
            what = "is a file, not a folder" if root.fs.exists(root.path) else "does not exist"
            raise UserError(
                f"{root.url} {what}. Point DATA_URL at a folder with one sub-folder per label "
                "(e.g. yes/ and no/)."
            )
        entries = root.fs.ls(root.path, detail=True)
    except UserError:
        raise
    except FileNotFoundError as exc:
        raise UserError(f"{root.url} does not exist. Check DATA_URL.") from exc
    except Exception as exc:  # noqa: BLE001 - every backend raises its own types
        raise StorageError(
            f"{root.url}: storage unreachable ({type(exc).__name__}: {exc}). Check that the "
            "server is running, AWS_ENDPOINT_URL points at it and the credentials are set."
        ) from exc
    folders: list[str] = []
    outside: list[tuple[str, str]] = []
    prefix = root.path.rstrip("/") + "/"
    for entry in entries:
        if entry["name"].endswith("/") and entry["type"] != "directory":
            continue  # an empty "folder/" object, as S3 consoles create
        name = entry["name"].removeprefix(prefix).rstrip("/")
        if _moves(name):  # keys "data//x", "data/./x", "data/../x" of an object store
            outside.append((name, _BAD_KEY))
            continue
        if name.startswith(".") or name.lower() in IGNORED_NAMES:
            continue
        if entry.get("islink"):
            outside.append((name, _LINK))
        elif entry["type"] == "directory":
            folders.append(name)
        else:
            outside.append((name, "not inside a label folder, not used"))
    if not folders:
        links = [name for name, why in outside if why == _LINK]
        note = f" Linked folders are not followed: {', '.join(links)}." if links else ""
        raise UserError(
            f"{root.url} holds no label folders. Put the images in one sub-folder per label "
            f"(e.g. yes/ and no/).{note}"
        )
    return folders, outside


def _walk(folder: Location, limit: int | None = None) -> list[tuple[str, int, bool]]:
    """(path, size, is a link) of every file below ``folder``, sorted; at most ``limit`` of
    them, listing no further than needed to find that many.

    Links are reported rather than read: one can point outside the data folder. Keys ending in
    "/" are the empty folder objects S3 consoles create, not files. S3 lists the whole prefix
    flat, ``limit`` keys at most (``max_items``); other filesystems are walked folder by folder.
    """
    if folder.protocol == "s3":
        found = folder.fs.find(folder.path, detail=True, withdirs=False, max_items=limit)
        infos = list(found.items())
    else:
        infos = []
        for _, _, files in folder.fs.walk(folder.path, detail=True):
            infos += files.items()
            if limit is not None and len(infos) >= limit:
                break
    files = sorted(
        (info["name"], int(info.get("size") or 0), bool(info.get("islink")))
        for _, info in infos
        if not info["name"].endswith("/")
    )
    return files if limit is None else files[:limit]


def is_scan(location: Location, path: str) -> bool:
    """True for a scan's extension, or a file that starts as DICOM does (read for 132 bytes;
    an unreadable one is not DICOM)."""
    if posixpath.basename(path).lower().endswith(SCAN_EXTENSIONS):
        return True
    try:
        return is_dicom(location.fs.cat_file(path, start=0, end=132))
    except Exception:  # noqa: BLE001 - the file is skipped with its reason either way
        return False


def _moves(rel: str) -> bool:
    """True when a component of ``rel`` would move it elsewhere if read as a path.

    Such a key is never normalised: ``yes/../no/x.jpg`` would become ``no/x.jpg``, a different
    object under another label.
    """
    return any(part in ("", ".", "..") for part in rel.split("/"))
