"""Peak memory of scanning many large 16-bit TIFFs under a memory budget.

Writes one 64 MP 16-bit greyscale TIFF (deflate: a few hundred kB on disk, 128 MB of pixels),
copies it ``--files`` times into two label folders, then scans them in a fresh process with
``--budget-gb`` and reports the threads used, the peak RSS above the process's RSS before the
scan (``ru_maxrss``), that peak per decoding thread and per pixel, and the seconds taken.

    python benchmarks/bench_decode_memory.py --files 8 --budget-gb 2.5
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

MEASURE = """
import json, resource, sys, time
from braintl.data.decode import DecodeLimits
from braintl.data.listing import list_images
from braintl.data.manifest import scan
from braintl.limits import decode_workers
folder, budget, limits = sys.argv[1], float(sys.argv[2]), DecodeLimits(**json.loads(sys.argv[3]))
listing = list_images(folder)
workers = decode_workers(limits.peak_bytes(), budget, 8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
manifest = scan(listing, limits, memory_budget_gb=budget)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
ok = sum(r.status != "quarantined" for r in manifest.records)  # copies across labels conflict
print(json.dumps({"workers": workers, "rss_before": before, "peak_rss": peak,
                  "decoded": ok, "seconds": round(seconds, 1)}))
"""


def write_tiffs(folder: Path, n: int, side: int = 8000) -> int:
    """``n`` copies of one ``side``² 16-bit TIFF under ``folder``/yes and /no; its pixels."""
    rows = (np.arange(side, dtype=np.uint32) * 65535 // side).astype(np.uint16)
    first = folder / "source.tif"
    Image.fromarray(np.repeat(rows[:, None], side, axis=1)).save(first, compression="tiff_deflate")
    for i in range(n):
        label = folder / ("yes" if i % 2 else "no")
        label.mkdir(exist_ok=True)
        shutil.copyfile(first, label / f"scan{i}.tif")
    first.unlink()
    return side * side


def measure(folder: Path, budget_gb: float, limits: dict | None = None) -> dict:
    """Scan ``folder`` in a fresh process under ``budget_gb`` and ``DecodeLimits(**limits)``;
    what :data:`MEASURE` prints."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(folder), str(budget_gb), json.dumps(limits or {})],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--budget-gb", type=float, default=2.5)
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pixels = write_tiffs(Path(tmp), args.files)
        result = measure(Path(tmp), args.budget_gb)
    grown = result["peak_rss"] - result["rss_before"]
    result |= {
        "files": args.files,
        "pixels_per_file": pixels,
        "budget_bytes": int(args.budget_gb * 1024**3),
        "peak_above_start": grown,
        "bytes_per_pixel_per_thread": round(grown / result["workers"] / pixels, 2),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
