"""Data pipeline speed, each figure beside a baseline measured in the same run.

1. ``braintl data inspect`` (decode, check, hash, group) on the raw set, against the same scan
   on one thread, and against bare decoding (PIL open + load, nothing else).
2. Loading a prepared 2062-image tensor cache at 224 px, against decoding and resizing the
   2062 augmented JPEGs with PIL: what a pipeline without a cache does every epoch.

    python benchmarks/bench_data.py --data ../shared/data/brain_mri \
        --augmented ../shared/data/brain_mri_augmented
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from braintl.data.listing import list_images
from braintl.data.manifest import scan
from braintl.data.splits import make_split
from braintl.data.tensors import TensorSet


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="raw labelled images (brain_mri)")
    parser.add_argument("--augmented", help="the augmented set, for the no-cache baseline")
    parser.add_argument("--n", type=int, default=2062)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default="benchmarks/results/bench_data.json")
    args = parser.parse_args()

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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
