"""Apply a published model to new scans, decoded and preprocessed exactly as training's were.

The model is the package's fold ensemble (the mean probability of its members; one member for
``braintl train``'s package), at the package's threshold. :func:`probabilities` is the one entry
for other code that scores images with a published model (external validation, the champion
challenge goes through :func:`predict`).

Images come from files, folders (searched recursively for image, DICOM and NIfTI files) or
storage URLs. Each is decoded by :func:`braintl.data.formats.decode_file` with the model's decode
limits and clinical settings and preprocessed by :func:`braintl.data.preprocess.preprocess` with
the model's settings, so the network sees the pixels the tensor cache would hold. A DICOM frame or
NIfTI slice is one row, its file ``path#frame=N`` or ``path#slice=N`` as in the manifest, with
the hashed SOPInstanceUID, PatientID and StudyInstanceUID in ``instance``, ``patient`` and
``study`` (``rollup`` gathers them per patient or study); such a URL asks for that image alone
(the challenge scores held-out slices so). An image that cannot be read or decoded is reported
with its reason and the rest go on.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from braintl.data.clinical import FileImages, Identity
from braintl.data.decode import UNREADABLE, Quarantine
from braintl.data.formats import decode_file
from braintl.data.listing import IGNORED_NAMES, SCAN_EXTENSIONS, is_scan
from braintl.data.preprocess import preprocess
from braintl.errors import UserError
from braintl.publish import PublishedModel, load_model
from braintl.storage import StorageError, resolve

BATCH_SIZE = 32
CSV_COLUMNS = ("file", "probability", "label", "error", "instance", "patient", "study")
FRAME = re.compile(r"#(frame|slice)=\d+$")  # what a multi-image file's records append


@dataclass(frozen=True)
class Prediction:
    file: str
    probability: float
    label: str  # at the model's threshold
    instance: str = ""  # a DICOM's hashed SOPInstanceUID
    patient: str = ""  # its hashed PatientID
    study: str = ""  # its hashed StudyInstanceUID


@dataclass(frozen=True)
class Unreadable:
    file: str
    reason: str  # one of braintl.data.decode.REASONS
    detail: str


@dataclass(frozen=True)
class Batch:
    """One scored batch: the preprocessed images (uint8 N×3×S×S) with their predictions, and
    the files of this batch that could not be used."""

    images: np.ndarray
    predictions: list[Prediction]
    unreadable: list[Unreadable]


@dataclass(frozen=True)
class Predictions:
    model_url: str
    threshold: float
    members: int  # fold models whose mean probability is the model's
    rows: list[Prediction]
    unreadable: list[Unreadable]

    def to_json(self) -> dict:
        return {
            "model": self.model_url,
            "threshold": self.threshold,
            "members": self.members,
            "predictions": [asdict(r) for r in self.rows],
            "unreadable": [asdict(u) for u in self.unreadable],
        }

    def to_csv(self) -> str:
        """One row per image: scored ones with probability and label, unreadable ones with the
        reason in ``error`` (probability and label empty)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in self.rows:
            probability = f"{row.probability:.6f}"
            ids = [row.instance, row.patient, row.study]
            writer.writerow([row.file, probability, row.label, "", *ids])
        for bad in self.unreadable:
            writer.writerow([bad.file, "", "", f"{bad.reason}: {bad.detail}", "", "", ""])
        return buffer.getvalue()


def _frame_of_a_file(source: str) -> bool:
    """True for ``file#frame=N`` or ``file#slice=N`` of an existing file."""
    match = FRAME.search(source)
    return bool(match) and resolve(source[: match.start()]).exists()


def find_images(sources: Sequence[str]) -> list[str]:
    """Image URLs from files, folders and storage URLs, in the order given (folders sorted).

    A file named explicitly is taken whatever its extension (decoding decides); in folders only
    scan files count (``listing.is_scan``); ``file#slice=N`` names one image of a file. A
    source that does not exist is an error, as is finding nothing.
    """
    found: list[str] = []
    for source in sources:
        location = resolve(source)
        if location.fs.isdir(location.path):
            for path in sorted(location.fs.find(location.path)):
                name = posixpath.basename(path)
                if name.lower() in IGNORED_NAMES or name.startswith("._"):
                    continue
                if is_scan(location, path):
                    found.append(location.join(posixpath.relpath(path, location.path)).url)
        elif location.exists() or _frame_of_a_file(source):
            found.append(location.url)
        else:
            raise UserError(f"{location.url}: no such file or folder; pass image files or folders")
    if not found:
        raise UserError(
            f"no images in {', '.join(sources)} (looked for {', '.join(SCAN_EXTENSIONS)}); "
            "pass image files or folders holding images"
        )
    return found


def predictions_url(folder_url: str) -> str:
    """Where the predictions of a folder go by default: ``<folder>.predictions.csv`` beside it
    (inside it for a bare bucket, which has nothing beside it)."""
    folder = resolve(folder_url.rstrip("/"))
    parent, name = posixpath.split(folder.path)
    if not parent or not name:
        return folder.join("predictions.csv").url
    return resolve(folder.url + ".predictions.csv").url


def _load(
    url: str, published: PublishedModel, last: dict[str, FileImages | Quarantine]
) -> list[tuple[str, np.ndarray, Identity]]:
    """(row file, preprocessed pixels uint8 3×S×S, identity) of each image ``url`` names: all of
    a file's, or the one frame or slice its suffix names; or Quarantine. ``last`` keeps the
    last file decoded (or its Quarantine), so the slices of a volume asked for one by one (the
    challenge's held-out images, listed in order) decode it once."""
    match = FRAME.search(url)
    file_url = url[: match.start()] if match else url
    if file_url not in last:
        last.clear()
        try:
            last[file_url] = _decode(file_url, published)
        except Quarantine as exc:
            last[file_url] = exc
    images = last[file_url]
    if isinstance(images, Quarantine):
        raise images
    frames = [f for f in images.frames if not match or f.suffix == match.group(0)]
    if not frames:
        raise Quarantine(UNREADABLE, f"the file holds no {match.group(0)[1:]} (or not kept)")
    return [
        (
            file_url + f.suffix,
            preprocess(f.decoded.rgb, published.preprocess),
            images.identity,
        )
        for f in frames
    ]


def _decode(file_url: str, published: PublishedModel) -> FileImages:
    try:
        data = resolve(file_url).read_bytes(published.limits.max_bytes)
    except (OSError, StorageError) as exc:
        raise Quarantine(UNREADABLE, f"cannot read ({type(exc).__name__}: {exc})") from None
    return decode_file(file_url, data, published.limits, published.clinical)


def predict_batches(
    published: PublishedModel, urls: Sequence[str], batch_size: int = BATCH_SIZE
) -> Iterator[Batch]:
    """Score ``urls`` ``batch_size`` files at a time: memory stays bounded however many there
    are (a file's frames or slices all come in its batch)."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    side = published.preprocess.image_size
    last: dict[str, FileImages | Quarantine] = {}
    for start in range(0, len(urls), batch_size):
        pixels, files, unreadable = [], [], []
        for url in urls[start : start + batch_size]:
            try:
                loaded = _load(url, published, last)
            except Quarantine as exc:
                unreadable.append(Unreadable(url, exc.reason, exc.detail))
                continue
            pixels += [image for _, image, _ in loaded]
            files += [(file, identity) for file, _, identity in loaded]
        images = np.stack(pixels) if pixels else np.empty((0, 3, side, side), np.uint8)
        probs = published.probabilities(images) if pixels else np.empty(0)
        rows = [
            Prediction(f, float(p), published.label(float(p)), i.instance, i.patient, i.study)
            for (f, i), p in zip(files, probs, strict=True)
        ]
        yield Batch(images, rows, unreadable)


def predict(
    published: PublishedModel,
    urls: Sequence[str],
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[Batch], None] | None = None,
) -> Predictions:
    """Tumor probability and label for every image in ``urls``; unreadable ones listed.

    ``on_batch`` sees each scored batch (a progress bar, Grad-CAM overlays).
    """
    rows: list[Prediction] = []
    unreadable: list[Unreadable] = []
    for batch in predict_batches(published, urls, batch_size):
        rows += batch.predictions
        unreadable += batch.unreadable
        if on_batch is not None:
            on_batch(batch)
    return Predictions(published.url, published.threshold, len(published.members), rows, unreadable)


def probabilities(
    model: str | PublishedModel, images: Sequence[str] | np.ndarray | torch.Tensor
) -> np.ndarray:
    """Tumor probabilities of a published model (its URL or the loaded package), one per image.

    ``images``: image files or storage URLs, decoded and preprocessed as the package says (an
    unreadable one is an error naming it: :func:`predict` lists and skips them instead), or
    uint8 N×3×S×S pixels already preprocessed with the package's settings (``preprocess``
    in its model.json: a tensor cache built with them), S its image size.
    """
    published = model if isinstance(model, PublishedModel) else load_model(model)
    if isinstance(images, np.ndarray | torch.Tensor):
        side = published.preprocess.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, side, side):
            raise UserError(
                f"images of shape {tuple(images.shape)}: {published.url} takes uint8 N×3×"
                f"{side}×{side}; preprocess them with its settings ({published.info['preprocess']})"
                " or pass the image files"
            )
        if images.dtype not in (np.uint8, torch.uint8):
            raise UserError(f"images of dtype {images.dtype}: pass uint8 pixels (0..255)")
        return published.probabilities(images)
    result = predict(published, list(images))
    if result.unreadable:
        raise UserError(
            f"{len(result.unreadable)} of {len(images)} images unreadable, e.g. "
            + "; ".join(f"{u.file}: {u.reason}: {u.detail}" for u in result.unreadable[:3])
            + ". Remove them, or use braintl.predict.predict, which lists and skips them."
        )
    return np.asarray([row.probability for row in result.rows])
