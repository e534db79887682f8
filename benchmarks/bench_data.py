"""Data pipeline speed, each figure beside a baseline measured in the same run.

1. ``braintl data inspect`` (decode, check, hash, group) on the raw set, against the same scan
   on one thread, and against bare decoding (PIL open + load, nothing else).
2. Loading a prepared 2062-image tensor cache at 224 px, against decoding and resizing the
   2062 augmented JPEGs with PIL: what a pipeline without a cache does every epoch.
3. The same N distinct slices (crops of the real scans, 256 px grey) as PNG, as uncompressed
   DICOM and as RLE Lossless DICOM (decoded by pylibjpeg-rle), side by side: listing, decoding
   (``decode_file``, one thread) and ``prepare`` building the tensor cache, cold, each format in
   a fresh process timed whole; then warm, as a retrain run's second start meets it: the
   snapshot of the folder (the prepare task's cache key) and the cached tensors loaded (mapped,
   every pixel read once), again in a fresh process each. Wall and CPU seconds: on a shared
   machine the CPU ones compare. The slices go under a temporary folder, removed afterwards.

    python benchmarks/bench_data.py --data ../shared/data/brain_mri \
        --augmented ../shared/data/brain_mri_augmented
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import describe
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, RLELossless

from braintl.data.augment import AugmentConfig
from braintl.data.formats import decode_file
from braintl.data.listing import list_images
from braintl.data.manifest import scan
from braintl.data.prepare import DataConfig, prepare
from braintl.data.pseudonyms import SALT_ENV
from braintl.data.splits import make_split
from braintl.data.tensors import TensorSet

FORMATS = {"png": ".png", "dicom": ".dcm", "dicom-rle": ".dcm"}
SLICE_SIDE = 256
UID_ROOT = "1.2.826.0.1.3680043.8.498.4242"  # pydicom's prefix; fixed, so reruns match


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_inspect(data: str) -> list[dict]:
    listing = list_images(data)
    files = [Path(ref.url) for ref in listing.images]

    def bare_decode():
        for f in files:
            with Image.open(f) as im:
                im.load()

    t_bare, _ = timed(bare_decode)
    t_one, _ = timed(lambda: scan(listing, workers=1))
    t_full, manifest = timed(lambda: scan(list_images(data)))
    n = len(listing.images)
    return [
        {"case": "inspect (braintl, threads)", "images": n, "seconds": t_full},
        {"case": "inspect (braintl, 1 thread)", "images": n, "seconds": t_one},
        {"case": "bare PIL decode, 1 thread", "images": n, "seconds": t_bare},
    ]


def bench_load(augmented: str | None, n: int, size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    tensors = TensorSet(
        images=rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),
        labels=labels,
        groups=np.arange(n),
        augmented=np.zeros(n, bool),
        split=make_split("groups", labels, np.arange(n), 5, 0.15, 0),
        meta={},
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tensors.save(tmp)
        t_load, loaded = timed(lambda: TensorSet.load(tmp), repeat=3)
        assert loaded.images.shape == (n, 3, size, size)
        mb = loaded.images.nbytes / 2**20
        rows.append({"case": f"load tensor cache ({mb:.0f} MB)", "images": n, "seconds": t_load})
    if augmented:
        files = sorted(p for p in Path(augmented).rglob("*") if p.is_file())[:n]

        def decode_resize():
            for f in files:
                with Image.open(f) as im:
                    im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)

        t_naive, _ = timed(decode_resize)
        rows.append({"case": "decode+resize JPEGs (PIL)", "images": len(files), "seconds": t_naive})
    return rows


def write_slices(data: str, root: Path, n: int) -> None:
    """``n`` distinct slices from the real scans (the k-th pass over them cropped k·3 % tighter
    and shifted), each written as PNG, uncompressed DICOM and RLE DICOM with the same pixels;
    one patient and study per source scan."""
    refs = list_images(data).images
    rank = {ref.url: sum(r.folder == ref.folder for r in refs[:i]) for i, ref in enumerate(refs)}
    # Labels alternate, so that any n has both.
    sources = sorted(((r.url, r.folder) for r in refs), key=lambda s: (rank[s[0]], s[1]))
    for i in range(n):
        source, folder = sources[i % len(sources)]
        scan_index, k = i % len(sources), i // len(sources)
        with Image.open(source) as im:
            grey = im.convert("L")
        w, h = grey.size
        margin, shift = 0.03 * k * min(w, h), (-1) ** k * 0.01 * k * min(w, h)
        box = (margin + shift, margin, w - margin + shift, h - margin)
        pixels = np.asarray(grey.crop(box).resize((SLICE_SIDE, SLICE_SIDE), Image.BICUBIC))
        for fmt, ext in FORMATS.items():
            path = root / fmt / folder / f"s{i:05d}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "png":
                Image.fromarray(pixels).save(path)
            else:
                syntax = RLELossless if fmt == "dicom-rle" else None
                _write_dicom(path, pixels, scan_index, i, syntax)


def _write_dicom(path: Path, pixels: np.ndarray, patient: int, index: int, syntax) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = f"{UID_ROOT}.3.{index}"
    ds.StudyInstanceUID = f"{UID_ROOT}.1.{patient}"
    ds.SeriesInstanceUID = f"{UID_ROOT}.2.{patient}"
    ds.PatientID = f"bench-{patient:04d}"
    ds.Modality = "MR"
    ds.set_pixel_data(pixels, "MONOCHROME2", 8)
    if syntax is not None:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)


def data_config() -> DataConfig:
    """The defaults (224 px) without offline augmentation, which costs the same for every
    format; the window is the full 8-bit range, so the DICOM slices become the PNGs' pixels."""
    return DataConfig(augment=AugmentConfig(enabled=False), clinical={"window": (127.5, 255)})


def measure_cold(folder: str, out: str) -> dict:
    """Listing, one-thread decoding of every file's bytes, then building the tensor cache."""
    t_list, listing = timed(lambda: list_images(folder))
    blobs = [(ref.url, Path(ref.url).read_bytes()) for ref in listing.images]
    limits = data_config().decode_limits()
    clinical = data_config().clinical
    t_decode, cpu_decode, _ = cpu_timed(
        lambda: [decode_file(n, b, limits, clinical) for n, b in blobs]
    )
    t_prepare, cpu_prepare, prepared = cpu_timed(lambda: prepare(folder, out, data_config()))
    assert not prepared.reused
    return {
        "images": len(blobs),
        "bytes": sum(len(b) for _, b in blobs),
        "list_s": t_list,
        "decode_s": t_decode,
        "decode_cpu_s": cpu_decode,
        "prepare_s": t_prepare,
        "prepare_cpu_s": cpu_prepare,
        "tensors_url": prepared.tensors_url,
    }


def measure_warm(folder: str, tensors_url: str) -> dict:
    """What a retrain run's second start does for data: snapshot the folder (the prepare
    task's cache key, so Prefect returns the cached record) and load the cached tensors."""
    from tasks.data import snapshot  # Prefect: only here, as the flow has it

    def load_and_read() -> TensorSet:  # the cache is memory-mapped: touch every pixel once
        tensors = TensorSet.load(tensors_url)
        assert int(tensors.images.max(axis=(1, 2, 3)).min()) >= 0
        return tensors

    t_snapshot, _ = timed(lambda: snapshot.fn(folder))
    t_load, cpu_load, tensors = cpu_timed(load_and_read)
    return {
        "images": len(tensors.labels),
        "snapshot_s": t_snapshot,
        "load_s": t_load,
        "load_cpu_s": cpu_load,
    }


def cpu_timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, all threads, result): on a shared machine
    the CPU seconds are the comparable figure; the wall ones include waiting for a core."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def in_fresh_process(*args: str) -> dict:
    """Run this file's ``--worker`` in a new Python; its figures plus the whole process's
    wall time (interpreter start and imports included: what a user meets)."""
    start, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, SALT_ENV: os.environ.get(SALT_ENV) or "bench-data-salt"},
    )
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1]) | {"process_s": wall, "process_cpu_s": cpu}


def bench_dicom(data: str, n: int, root: Path) -> dict:
    """Per format: cold (list, decode, prepare) and warm (snapshot, load), fresh processes."""
    t_write, _ = timed(lambda: write_slices(data, root, n))
    results = {"slices": n, "side": SLICE_SIDE, "write_s": t_write, "formats": {}}
    for fmt in FORMATS:
        folder, cache = str(root / fmt), str(root / f"cache-{fmt}")
        cold = in_fresh_process("cold", folder, cache)
        warm = in_fresh_process("warm", folder, cold["tensors_url"])
        results["formats"][fmt] = {"cold": cold, "warm": warm}
    png = results["formats"]["png"]
    for r in results["formats"].values():
        r["per_second"] = {
            "list": r["cold"]["images"] / r["cold"]["list_s"],
            "decode": r["cold"]["images"] / r["cold"]["decode_s"],
            "prepare": r["cold"]["images"] / r["cold"]["prepare_s"],
            "warm_load": r["warm"]["images"] / r["warm"]["load_s"],
        }
        r["cpu_ms_per_image"] = {
            "decode": 1000 * r["cold"]["decode_cpu_s"] / r["cold"]["images"],
            "prepare": 1000 * r["cold"]["prepare_cpu_s"] / r["cold"]["images"],
            "warm_load": 1000 * r["warm"]["load_cpu_s"] / r["warm"]["images"],
        }
        r["vs_png"] = {  # CPU seconds ÷ PNG's: above 1 costs more
            "decode": r["cold"]["decode_cpu_s"] / png["cold"]["decode_cpu_s"],
            "prepare": r["cold"]["prepare_cpu_s"] / png["cold"]["prepare_cpu_s"],
            "cold_process": r["cold"]["process_cpu_s"] / png["cold"]["process_cpu_s"],
            "warm_process": r["warm"]["process_cpu_s"] / png["warm"]["process_cpu_s"],
        }
    return results


def print_dicom(results: dict) -> None:
    print(f"\n{results['slices']} slices, {results['side']} px: CPU ms per image, process CPU s")
    head = f"{'format':10} {'decode':>7} {'prepare':>7} {'warm load':>9}"
    print(head + f" {'cold proc':>9} {'warm proc':>9} {'÷png decode':>11} {'÷png warm':>9}")
    for fmt, r in results["formats"].items():
        ms, ratio = r["cpu_ms_per_image"], r["vs_png"]
        print(
            f"{fmt:10} {ms['decode']:>7.1f} {ms['prepare']:>7.1f} {ms['warm_load']:>9.2f} "
            f"{r['cold']['process_cpu_s']:>9.1f} {r['warm']['process_cpu_s']:>9.1f} "
            f"{ratio['decode']:>11.2f} {ratio['warm_process']:>9.2f}"
        )


def worker(phase: str, *args: str) -> None:
    figures = measure_cold(*args) if phase == "cold" else measure_warm(*args)
    print(json.dumps(figures))


def bench_inspect_and_load(args: argparse.Namespace) -> list[dict]:
    inspect_rows = bench_inspect(args.data)
    load_rows = bench_load(args.augmented, args.n, args.size)
    inspect_rows[1]["ratio"] = inspect_rows[1]["seconds"] / inspect_rows[0]["seconds"]
    inspect_rows[2]["ratio"] = inspect_rows[2]["seconds"] / inspect_rows[0]["seconds"]
    if len(load_rows) == 2:
        load_rows[1]["ratio"] = load_rows[1]["seconds"] / load_rows[0]["seconds"]
    rows = inspect_rows + load_rows
    print(f"{'case':34} {'images':>7} {'seconds':>8} {'img/s':>8} {'÷ braintl':>9}")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "1.00"
        rate = r["images"] / r["seconds"]
        print(f"{r['case']:34} {r['images']:>7} {r['seconds']:>8.2f} {rate:>8.0f} {ratio:>9}")
    return rows


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        return worker(*sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="raw labelled images (brain_mri)")
    parser.add_argument("--augmented", help="the augmented set, for the no-cache baseline")
    parser.add_argument("--n", type=int, default=2062)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--dicom", type=int, default=2000, help="slices per format")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("inspect", "dicom"),
        default=["inspect", "dicom"],
        help="inspect: parts 1 and 2; dicom: part 3 (each alone fits a busier machine)",
    )
    parser.add_argument("--out", default="benchmarks/results/bench_data.json")
    args = parser.parse_args()
    load_before = os.getloadavg()

    rows = bench_inspect_and_load(args) if "inspect" in args.parts else None
    dicom = None
    if "dicom" in args.parts:
        with tempfile.TemporaryDirectory(prefix="bench-dicom-") as tmp:
            dicom = bench_dicom(args.data, args.dicom, Path(tmp))
        print_dicom(dicom)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = describe(load_before) | {"rows": rows, "dicom": dicom}
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
