"""Duplicate grouping, old (DCT hashes only) against new (hashes checked by signatures, plus
transformed copies), in one run, on the raw set and its offline-augmented copies.

The augmented files are named ``aug_<SOURCE>_<k>_<n>.jpg``: that name is the truth, used here
only to score, never to group. Two sources that are copies of one scan in the raw set (its
own groups, unchanged by this work) count as one scan for "scans per group".

    python benchmarks/bench_dedup.py --data ../shared/data  # writes dedup_augmented.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

import numpy as np

from braintl.data.decode import decode
from braintl.data.duplicates import (
    DEFAULT_NEAR_DISTANCE,
    copy_pairs,
    copy_stats,
    find_groups,
    near_pairs,
    perceptual_hash,
    pixel_hash,
)
from braintl.data.listing import list_images
from braintl.data.signature import COPY_DISTANCE, SIZE, signature
from braintl.storage import resolve

AUGMENTED_NAME = re.compile(r"aug_(.+)_\d+_\d+\.jpg$")


def source_of(relpath: str) -> str:
    """``aug_Y100_0_2052.jpg`` → ``y100``; raw ``Y100.JPG`` → ``y100`` (``1 no.`` → ``1 no``)."""
    name = PurePosixPath(relpath).name
    match = AUGMENTED_NAME.match(name)
    return (match.group(1) if match else PurePosixPath(name).stem).rstrip(".").lower()


def load(folder: Path) -> tuple[list[str], list[str], list[np.ndarray]]:
    listing = list_images(str(folder))
    pixels = [decode(resolve(ref.url).read_bytes()).rgb for ref in listing.images]
    return [r.relpath for r in listing.images], [r.label for r in listing.images], pixels


def hashes(pixels: list[np.ndarray]) -> dict:
    start = time.perf_counter()
    phashes = [perceptual_hash(p) for p in pixels]
    t_hash = time.perf_counter() - start
    start = time.perf_counter()
    sigs = np.array([signature(p) for p in pixels], dtype=np.float32).reshape(-1, SIZE)
    t_sig = time.perf_counter() - start
    return {
        "pixel": [pixel_hash(p) for p in pixels],
        "phash": phashes,
        "sig": sigs,
        "ms_hash": 1000 * t_hash / len(pixels),
        "ms_sig": 1000 * t_sig / len(pixels),
    }


def grouped(h: dict, new: bool) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    g = find_groups(h["pixel"], h["phash"], DEFAULT_NEAR_DISTANCE, h["sig"] if new else None)
    return g.group, time.perf_counter() - start


def score(relpaths: list[str], labels: list[str], group: np.ndarray, scan_of: dict) -> dict:
    """Grouping share, pair recall, label conflicts and mixing, against the file names."""
    src = [source_of(p) for p in relpaths]
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(group.tolist()):
        members[g].append(i)
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(src):
        by_source[s].append(i)
    with_source = sum(
        any(src[j] == src[i] for j in members[group[i]] if j != i) for i in range(len(src))
    )
    pairs = sum(len(idx) * (len(idx) - 1) // 2 for idx in by_source.values())
    together = sum(
        c * (c - 1) // 2
        for idx in by_source.values()
        for c in Counter(group[i] for i in idx).values()
    )
    sources = [len({src[i] for i in idx}) for idx in members.values()]
    scans = [len({scan_of.get(src[i], src[i]) for i in idx}) for idx in members.values()]
    stats = copy_stats(group)
    return {
        "images": len(src),
        "sources_by_name": len(by_source),
        "scans_by_name_and_raw_groups": len({scan_of.get(s, s) for s in src}),
        "groups": len(members),
        "share_grouped_with_source": round(with_source / len(src), 4),
        "pair_recall": round(together / pairs, 4),
        "label_conflict_groups": sum(len({labels[i] for i in idx}) > 1 for idx in members.values()),
        "largest_group": max(len(idx) for idx in members.values()),
        "max_sources_per_group": max(sources),
        "groups_with_several_sources": sum(k > 1 for k in sources),
        "max_scans_per_group": max(scans),
        "groups_with_several_scans": sum(k > 1 for k in scans),
        "pre_augmented": stats["pre_augmented"],
        "median_group_size_per_image": stats["median_group_size"],
    }


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        len(set(zip(a.tolist(), b.tolist(), strict=True)))
        == len(set(a.tolist()))
        == len(set(b.tolist()))
    )


def pairing_scale(n: int) -> dict:
    """Seconds to find all pairs among ``n`` random hashes / signatures (no matches: pure cost)."""
    rng = np.random.default_rng(0)
    phashes = [bytes(rng.integers(0, 256, 64, dtype=np.uint8)).hex() for _ in range(n)]
    sigs = rng.normal(size=(n, SIZE)).astype(np.float32)
    start = time.perf_counter()
    near_pairs(phashes, DEFAULT_NEAR_DISTANCE)
    t_hash = time.perf_counter() - start
    start = time.perf_counter()
    copy_pairs(sigs, COPY_DISTANCE)
    return {"images": n, "hash_pairs_s": round(t_hash, 2), "signature_pairs_s": round(
        time.perf_counter() - start, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="folder of brain_mri*/")
    parser.add_argument("--scale", type=int, default=20_000, help="images for pairing_scale")
    parser.add_argument("--out", default=str(Path(__file__).with_name("dedup_augmented.json")))
    args = parser.parse_args()
    data = Path(args.data)

    raw_paths, _, raw_pixels = load(data / "brain_mri")
    raw = hashes(raw_pixels)
    raw_old, _ = grouped(raw, new=False)
    raw_new, _ = grouped(raw, new=True)
    scan_of = {source_of(p): f"scan{g}" for p, g in zip(raw_paths, raw_old.tolist(), strict=True)}

    paths, labels, pixels = load(data / "brain_mri_augmented")
    aug = hashes(pixels)
    result = {"raw_partition_unchanged": same_partition(raw_old, raw_new)}
    result["raw_groups"] = {"old": len(set(raw_old.tolist())), "new": len(set(raw_new.tolist()))}
    for name, new in (("old", False), ("new", True)):
        group, seconds = grouped(aug, new)
        result[name] = {
            **score(paths, labels, group, scan_of),
            "hash_ms_per_image": round(aug["ms_hash"] + (aug["ms_sig"] if new else 0.0), 2),
            "pairing_s": round(seconds, 3),
        }
    result["pairing_scale"] = pairing_scale(args.scale)
    result["settings"] = {"near_distance": DEFAULT_NEAR_DISTANCE, "copy_distance": COPY_DISTANCE}
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
