"""``braintl predict``: a published model applied to new scans, one row per image (and, on
request, per patient or study)."""

from __future__ import annotations

import argparse
import posixpath
import sys
from collections.abc import Sequence

import torch
from tqdm import tqdm

from braintl.commands.output import OUT_HELP, default_out, print_json, table
from braintl.errors import UserError
from braintl.predict import BATCH_SIZE, Batch, find_images, predict
from braintl.publish import load_model, resolve_model_url
from braintl.rollup import ROLLUPS, rollup, rollup_csv, rollup_json, rollup_url
from braintl.storage import Location, resolve

PROGRESS_FROM = 64  # images; fewer finish before a progress bar would help


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", metavar="IMAGES", help="image files, folders or URLs")
    p.add_argument("--data", metavar="URL", help="a folder (local or s3://) of images to score")
    p.add_argument(
        "--model",
        default="champion",
        metavar="SPEC",
        help="champion (through RUNS/champion.json), latest (the last completed run's), a run "
        "URL or a model URL (default: champion)",
    )
    p.add_argument(
        "--runs",
        default=default_out(),
        metavar="URL",
        help="output of braintl run, for champion and latest; " + OUT_HELP,
    )
    p.add_argument("--out", metavar="URL", help="write the rows as CSV here (local or s3://)")
    p.add_argument("--gradcam", metavar="DIR", help="write a Grad-CAM overlay PNG per image here")
    p.add_argument(
        "--rollup",
        choices=ROLLUPS,
        help="also one row per patient (or study) of DICOM files: the maximum probability over "
        "its images (a file without the tag, e.g. a NIfTI volume, is its own); with --out "
        "written to OUT's name with .patient.csv (or .study.csv)",
    )
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    sources = list(args.images) + ([args.data] if args.data else [])
    if not sources:
        raise UserError("nothing to score: pass image files or folders, or --data URL")
    published = load_model(resolve_model_url(args.model, args.runs))
    urls = find_images(sources)
    overlays = _Overlays(published.members, resolve(args.gradcam)) if args.gradcam else None
    with tqdm(
        total=len(urls), unit="image", file=sys.stderr, disable=len(urls) < PROGRESS_FROM
    ) as bar:

        def on_batch(batch: Batch) -> None:
            if overlays:
                overlays.write(batch)
            bar.update(len(batch.predictions) + len(batch.unreadable))

        result = predict(published, urls, args.batch_size, on_batch)
    rolled = rollup(result, args.rollup) if args.rollup else None
    rolled_url = rollup_url(args.out, args.rollup) if args.out and args.rollup else None
    if args.out:
        resolve(args.out).write_bytes(result.to_csv().encode())
    if rolled_url:
        resolve(rolled_url).write_bytes(rollup_csv(rolled, args.rollup).encode())
    if args.json:
        extra = {"csv": resolve(args.out).url if args.out else None}
        if rolled is not None:
            extra["rollup"] = {"by": args.rollup, "csv": rolled_url}
            extra["rollup"]["rows"] = rollup_json(rolled, args.rollup)
        print_json(result.to_json() | extra | {"gradcam": overlays.urls if overlays else {}})
        return 0
    rows = [(r.file, r.probability, r.label) for r in result.rows]
    print(
        f"model {result.model_url} (mean probability of {result.members} fold model(s); tumor "
        f"when probability >= {result.threshold:.4f})"
    )
    if rows:
        print(table(("file", "probability", "label"), rows))
    if rolled:
        print(f"by {args.rollup} (maximum over its images):")
        columns = (args.rollup, "probability", "label", "slices", "top")
        print(table(columns, [(r.key, r.probability, r.label, r.slices, r.top) for r in rolled]))
    for bad in result.unreadable:
        print(f"unreadable: {bad.file}: {bad.reason}: {bad.detail}")
    print(f"{len(result.rows)} scored, {len(result.unreadable)} unreadable", end="")
    print(f"; CSV: {resolve(args.out).url}" if args.out else "", end="")
    print(f", by {args.rollup}: {rolled_url}" if rolled_url else "")
    return 0


class _Overlays:
    """Grad-CAM overlays of the ensemble (its members' mean map), one PNG per scored image,
    named after the image file."""

    def __init__(self, members: Sequence[torch.nn.Module], folder: Location):
        self.members = members
        self.folder = folder
        self.urls: dict[str, str] = {}

    def write(self, batch: Batch) -> None:
        from braintl.gradcam import ensemble_grad_cam, overlay_png  # matplotlib: when asked

        if not batch.predictions:
            return
        heatmaps = ensemble_grad_cam(self.members, torch.from_numpy(batch.images))
        for image, heatmap, row in zip(batch.images, heatmaps, batch.predictions, strict=True):
            target = self.folder.join(self._name(row.file))
            target.write_bytes(overlay_png(image, heatmap))
            self.urls[row.file] = target.url

    def _name(self, file: str) -> str:
        """``<stem>.gradcam.png``; ``<stem>-2.gradcam.png`` ... when two images share a stem."""
        stem = posixpath.splitext(posixpath.basename(file))[0]
        taken = set(self.urls.values())
        name, n = f"{stem}.gradcam.png", 1
        while self.folder.join(name).url in taken:
            n += 1
            name = f"{stem}-{n}.gradcam.png"
        return name
