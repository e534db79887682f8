"""``braintl data inspect | split | prepare``: look at data, its split, and build its cache."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from braintl.commands.output import OUT_HELP, default_out, print_json, table
from braintl.data.decode import DecodeLimits
from braintl.data.duplicates import DEFAULT_NEAR_DISTANCE
from braintl.data.listing import list_images
from braintl.data.manifest import scan
from braintl.data.phantoms import data_or_phantoms
from braintl.data.prepare import (
    DataConfig,
    Prepared,
    build_tensors,
    part_sizes,
    prepare,
    scan_data,
)
from braintl.data.signature import COPY_DISTANCE
from braintl.data.splits import PROTOCOLS, leakage, members
from braintl.errors import UserError


def register(data: argparse.ArgumentParser) -> None:
    cmds = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    inspect = cmds.add_parser("inspect", help="counts, quarantined files, duplicates, fingerprint")
    inspect.add_argument("data_url", metavar="DATA_URL")
    add_validation_args(inspect)
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(handler=run_inspect)

    split = cmds.add_parser("split", help="part sizes per label and a leakage count")
    split.add_argument("data_url", metavar="DATA_URL")
    add_validation_args(split)
    add_split_args(split)
    split.add_argument("--json", action="store_true", help="print one JSON object")
    split.set_defaults(handler=run_split)

    prep = cmds.add_parser("prepare", help="build and cache the tensors training reads")
    prep.add_argument(
        "data_url",
        metavar="DATA_URL",
        nargs="?",
        help="labelled images; omitted: synthetic phantoms written under OUT_URL/phantoms",
    )
    prep.add_argument("--out", default=default_out(), metavar="OUT_URL", help=OUT_HELP)
    add_validation_args(prep)
    add_split_args(prep)
    add_tensor_args(prep)
    prep.add_argument("--json", action="store_true", help="print one JSON object")
    prep.set_defaults(handler=run_prepare)


def add_validation_args(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--label-map",
        default="yes=tumor,no=no_tumor",
        metavar="FOLDER=LABEL,...",
        help="label folders and their labels (default: %(default)s)",
    )
    p.add_argument("--min-side", type=int, default=32, help="px; smaller images are quarantined")
    p.add_argument(
        "--max-pixels", type=int, default=64_000_000, help="larger images are quarantined"
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        default=DecodeLimits.max_bytes,
        help="bytes a file; larger files are quarantined unread",
    )
    p.add_argument("--max-images", type=int, default=100_000, help="more files fail at once")
    p.add_argument(
        "--memory-budget-gb",
        type=float,
        help="memory the tensors may take while preparing (default: half this machine's RAM)",
    )
    p.add_argument(
        "--near-distance",
        type=int,
        default=DEFAULT_NEAR_DISTANCE,
        help="perceptual-hash bits (of 256) for near duplicates; -1 turns them off",
    )
    p.add_argument(
        "--copy-distance",
        type=float,
        default=COPY_DISTANCE,
        help="signature distance for flipped/rotated/shifted/zoomed copies (default: "
        "%(default)s); -1 turns them off",
    )
    p.add_argument(
        "--group-by",
        metavar="REGEX",
        help="files whose paths (under DATA_URL) match with equal (?P<group>...) are one source, "
        r"joined with the pixel groups, e.g. 'aug_(?P<group>.+?)_\d+_\d+\.'",
    )
    p.add_argument(
        "--manifest",
        metavar="CSV",
        help="CSV with columns path,label,group (or patient): labels instead of folders, and "
        "source groups joined with the pixel groups",
    )
    p.add_argument(
        "--window",
        metavar="CENTER,WIDTH",
        help="DICOM/NIfTI window for every file (default: the file's own, else percentiles)",
    )
    p.add_argument(
        "--dicom-group",
        default="PatientID,StudyInstanceUID,SeriesInstanceUID",
        metavar="TAG,...",
        help="DICOM tags tried in order for a file's group (default: %(default)s)",
    )
    p.add_argument("--slice-axis", default="axial", choices=("axial", "coronal", "sagittal"))
    p.add_argument(
        "--slices",
        default="all",
        metavar="RULE",
        help="NIfTI slices kept: all, middle:K, or brain:F (head over F of the slice area)",
    )


def add_split_args(p: argparse._ActionsContainer) -> None:
    p.add_argument("--protocol", choices=PROTOCOLS, default="groups")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)


def add_tensor_args(p: argparse._ActionsContainer) -> None:
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--crop", action="store_true", help="crop to the brain before resizing")
    p.add_argument("--no-augment", action="store_true", help="skip offline augmentation")


def parse_label_map(text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise UserError(
            f"--label-map {text!r}: write it as FOLDER=LABEL pairs, e.g. yes=tumor,no=no_tumor"
        )
    return {folder.strip(): label.strip() for folder, label in pairs}


def config_from_args(args: argparse.Namespace, **overrides) -> DataConfig:
    fields = {
        "label_map": parse_label_map(args.label_map),
        "min_side": args.min_side,
        "max_pixels": args.max_pixels,
        "max_bytes": args.max_bytes,
        "near_distance": args.near_distance,
        "copy_distance": args.copy_distance,
        "group_by": args.group_by,
        "manifest_url": args.manifest,
        "max_images": args.max_images,
        "memory_budget_gb": args.memory_budget_gb,
        "clinical": {
            "window": args.window.split(",") if args.window else None,
            "dicom_group": args.dicom_group.split(","),
            "slice_axis": args.slice_axis,
            "slices": args.slices,
        },
    }
    for name in ("protocol", "folds", "test_fraction", "seed"):
        if hasattr(args, name):
            fields[name] = getattr(args, name)
    fields.update(overrides)
    try:
        return DataConfig(**fields)
    except ValidationError as exc:
        raise UserError(_explain(exc)) from None


def tensor_config(args: argparse.Namespace) -> DataConfig:
    """The data settings of a command that builds tensors (``add_tensor_args`` and the rest)."""
    return config_from_args(
        args,
        preprocess={"image_size": args.image_size, "crop": args.crop},
        augment={"enabled": not args.no_augment},
    )


@dataclass(frozen=True)
class DataJob:
    """A tensor cache to make sure of: the data (None: phantoms written under ``out``), where
    the cache goes, its settings, and whether messages go to stderr (stdout carries JSON)."""

    data: str | None
    out: str
    cache: str
    config: DataConfig
    quiet_stdout: bool

    def run(self, before_write: Callable[[], None] | None = None) -> tuple[str, Prepared]:
        """The data URL used and the prepared cache; ``before_write`` runs before the first
        write (phantoms, tensor cache), as in ``prepare``."""
        log = sys.stderr if self.quiet_stdout else sys.stdout
        data_url = data_or_phantoms(self.data, self.out, log, before_write)
        return data_url, prepare(data_url, self.cache, self.config, before_write)


def _explain(exc: ValidationError) -> str:
    problems = "; ".join(
        f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()
    )
    return f"bad parameter value: {problems}"


def run_inspect(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    manifest = scan(
        list_images(args.data_url, config.label_map, config.max_images),
        config.decode_limits(),
        config.near_distance,
        config.copy_distance,
        provenance=config.provenance(),
        memory_budget_gb=config.memory_budget_gb,
        clinical=config.clinical,
    )
    summary = manifest.summary()
    if args.json:
        print_json(summary)
        return 0
    print(f"data: {summary['root']}   fingerprint: {summary['fingerprint']}")
    rows = [
        (label, n, summary["usable_per_label"].get(label, 0))
        for label, n in summary["per_label"].items()
    ]
    print(table(["label", "files", "usable"], rows))
    print(
        f"\n{summary['groups']} source groups; {summary['exact_duplicate_pairs']} exact and "
        f"{summary['near_duplicate_pairs']} near duplicate pairs "
        f"(within {summary['near_distance']} bits); {summary['transformed_copy_pairs']} joins "
        f"of transformed copies (signature within {summary['copy_distance']})"
    )
    if summary["provenance"]:
        _print_provenance(summary["provenance"])
    if summary["clinical"]:
        _print_clinical(summary["clinical"])
    for note in manifest.notes():
        print(f"\nWARNING: {note}")
    if summary["duplicate_groups"]:
        print("\nduplicate groups:")
        print(
            table(
                ["group", "kind", "label", "members"],
                [
                    (g["group"], g["kind"], g["labels"][0], ", ".join(g["members"]))
                    for g in summary["duplicate_groups"]
                ],
            )
        )
    _print_problems(
        "label conflicts (kept out of training and evaluation)",
        [
            (g["group"], "/".join(g["labels"]), ", ".join(g["members"]))
            for g in summary["label_conflicts"]
        ],
        ["group", "labels", "members"],
    )
    _print_problems(
        "quarantined",
        [(q["file"], q["reason"], q["detail"]) for q in summary["quarantined"]],
        ["file", "reason", "detail"],
    )
    _print_problems(
        "skipped", [(s["file"], s["reason"]) for s in summary["skipped"]], ["file", "reason"]
    )
    print(f"\ntime: {summary['seconds']:.2f} s")
    return 0


def _print_provenance(provenance: dict) -> None:
    sizes = provenance["files_per_group"]
    print(
        f"provenance: {provenance['groups']} groups, files per group min {sizes['min']} / "
        f"median {sizes['median']:g} / max {sizes['max']}; {provenance['ungrouped']} file(s) "
        "without a provenance group"
    )
    if provenance["manifest_url"]:
        print(
            f"manifest {provenance['manifest_url']}: {len(provenance['missing_files'])} row(s) "
            f"without a listed file (skipped), {len(provenance['not_in_manifest'])} file(s) "
            f"not in it (quarantined), {len(provenance['label_disagreements'])} label(s) "
            "disagreeing with the folder (the manifest's used)"
        )
        _print_problems(
            "manifest rows without a listed file",
            [(m["path"], m["line"]) for m in provenance["missing_files"]],
            ["path", "line"],
        )
        _print_problems(
            "labels the manifest changes",
            [(d["file"], d["folder"], d["manifest"]) for d in provenance["label_disagreements"]],
            ["file", "folder", "manifest"],
        )


def _print_clinical(clinical: dict) -> None:
    per = clinical["slices_per_patient"]
    print(
        f"clinical: {clinical['patients']} patients, {clinical['studies']} studies, "
        f"{clinical['series']} series; images per patient min {per['min']} / median "
        f"{per['median']:g} / max {per['max']}; {clinical['images_without_patient']} image(s) "
        "without a patient (NIfTI, or DICOM without PatientID)"
    )


def _print_problems(title: str, rows: list[tuple], headers: list[str]) -> None:
    if rows:
        print(f"\n{title}:")
        print(table(headers, rows))


def run_split(args: argparse.Namespace) -> int:
    # Part sizes do not depend on pixels: build at a tiny size to keep this quick.
    config = config_from_args(args, preprocess={"image_size": 32})
    start = time.perf_counter()
    manifest, pixels = scan_data(args.data_url, config)
    tensors = build_tensors(manifest, pixels, config)
    result = {
        "protocol": config.protocol,
        "leaky": tensors.split.leaky,
        "folds": config.folds,
        "test_fraction": config.test_fraction,
        "seed": config.seed,
        "images": len(tensors),
        "augmented": int(tensors.augmented.sum()),
        "parts": part_sizes(tensors),
        "leakage": leakage(tensors.split, tensors.groups),
        "fingerprint": manifest.fingerprint,
        "provenance": manifest.provenance_summary(),
        "members": members(tensors.split, len(tensors), tensors.meta["files"]),
        "seconds": round(time.perf_counter() - start, 3),
    }
    if args.json:
        print_json(result)
        return 0
    _print_split(result)
    return 0


def _print_split(result: dict) -> None:
    warn = "  (LEAKY: the seed's protocol, for comparison only)" if result["leaky"] else ""
    print(
        f"protocol: {result['protocol']}{warn}\nimages: {result['images']} "
        f"({result['augmented']} augmented)   folds: {result['folds']}   seed: {result['seed']}"
    )
    rows = []
    for name, part in result["parts"].items():
        if name == "test":
            rows.append(("test", "", part["tumor"], part["no_tumor"], part["total"]))
            continue
        for role in ("train", "val"):
            p = part[role]
            rows.append((name, role, p["tumor"], p["no_tumor"], p["total"]))
    print(table(["part", "role", "tumor", "no_tumor", "total"], rows))
    print(f"\nleakage: {result['leakage']} source groups in more than one part")


def run_prepare(args: argparse.Namespace) -> int:
    config = tensor_config(args)
    _, prepared = DataJob(args.data_url, args.out, args.out, config, args.json).run()
    meta = prepared.meta
    result = {
        "tensors_url": prepared.tensors_url,
        "key": prepared.key,
        "reused": prepared.reused,
        "fingerprint": prepared.manifest.fingerprint,
        "images": meta["n"],
        "augmented": meta["augmented"],
        "image_size": meta["image_size"],
        "protocol": meta["protocol"],
        "leaky": meta["leaky"],
        "leakage": meta["leakage"],
        "parts": meta["parts"],
        "folds": config.folds,
        "seed": config.seed,
        "quarantined": len(prepared.manifest.summary()["quarantined"]),
    }
    if args.json:
        print_json(result)
        return 0
    _print_split(result)
    state = "reused" if prepared.reused else "built"
    print(f"\ntensor cache {state}: {prepared.tensors_url}")
    return 0
