"""Apply a published model to new scans, decoded and preprocessed exactly as training's were.

Images come from files, folders (searched recursively for image extensions) or storage URLs.
Each is decoded by :func:`braintl.data.decode.decode` with the model's decode limits and
preprocessed by :func:`braintl.data.preprocess.preprocess` with the model's settings, so the
network sees the pixels the tensor cache would hold. An image that cannot be read or decoded is
reported with its reason and the rest go on.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from braintl.data.decode import UNREADABLE, Quarantine, decode
from braintl.data.listing import IGNORED_NAMES, IMAGE_EXTENSIONS
from braintl.data.preprocess import preprocess
from braintl.errors import UserError
from braintl.publish import PublishedModel
from braintl.storage import StorageError, resolve
from braintl.training import predict_proba

BATCH_SIZE = 32
CSV_COLUMNS = ("file", "probability", "label", "error")


@dataclass(frozen=True)
class Prediction:
    file: str
    probability: float
    label: str  # at the model's threshold


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
    rows: list[Prediction]
    unreadable: list[Unreadable]

    def to_json(self) -> dict:
        return {
            "model": self.model_url,
            "threshold": self.threshold,
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
            writer.writerow([row.file, f"{row.probability:.6f}", row.label, ""])
        for bad in self.unreadable:
            writer.writerow([bad.file, "", "", f"{bad.reason}: {bad.detail}"])
        return buffer.getvalue()


def find_images(sources: Sequence[str]) -> list[str]:
    """Image URLs from files, folders and storage URLs, in the order given (folders sorted).

    A file named explicitly is taken whatever its extension (decoding decides); in folders only
    image extensions count. A source that does not exist is an error, as is finding nothing.
    """
    found: list[str] = []
    for source in sources:
        location = resolve(source)
        if location.fs.isdir(location.path):
            for path in sorted(location.fs.find(location.path)):
                name = posixpath.basename(path)
                if name.lower() in IGNORED_NAMES or name.startswith("._"):
                    continue
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(location.join(posixpath.relpath(path, location.path)).url)
        elif location.exists():
            found.append(location.url)
        else:
            raise UserError(f"{location.url}: no such file or folder; pass image files or folders")
    if not found:
        raise UserError(
            f"no images in {', '.join(sources)} (looked for {', '.join(IMAGE_EXTENSIONS)}); "
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


def _load(url: str, published: PublishedModel) -> np.ndarray:
    """Decoded and preprocessed pixels (uint8 3×S×S) of one image, or Quarantine."""
    try:
        data = resolve(url).read_bytes(published.limits.max_bytes)
    except (OSError, StorageError) as exc:
        raise Quarantine(UNREADABLE, f"cannot read ({type(exc).__name__}: {exc})") from None
    return preprocess(decode(data, published.limits).rgb, published.preprocess)


def predict_batches(
    published: PublishedModel, urls: Sequence[str], batch_size: int = BATCH_SIZE
) -> Iterator[Batch]:
    """Score ``urls`` ``batch_size`` at a time: memory stays bounded however many there are."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    side = published.preprocess.image_size
    for start in range(0, len(urls), batch_size):
        pixels, files, unreadable = [], [], []
        for url in urls[start : start + batch_size]:
            try:
                pixels.append(_load(url, published))
                files.append(url)
            except Quarantine as exc:
                unreadable.append(Unreadable(url, exc.reason, exc.detail))
        images = np.stack(pixels) if pixels else np.empty((0, 3, side, side), np.uint8)
        probs = predict_proba(published.model, images) if pixels else np.empty(0)
        rows = [
            Prediction(f, float(p), published.label(float(p)))
            for f, p in zip(files, probs, strict=True)
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
    return Predictions(published.url, published.threshold, rows, unreadable)
