"""Exact and near duplicates, joined into source groups.

Exact: identical decoded pixels (a SHA-256 of shape and pixels, so re-saving a PNG or
renaming a file changes nothing). Near: 256-bit DCT perceptual hashes within a Hamming
distance. Any chain of such pairs is one source group: the unit that splits must keep whole.

Each image gets two perceptual hashes, of the whole frame and of the brain's bounding box,
and a pair's distance is the smaller of the two: the frame hash catches re-encodes and
resizes, the brain hash catches crops and re-framed copies. On the real set
(../shared/data/brain_mri) every true copy lies within 40 bits, the first different scan at
54 and the first pair of different labels at 62; the default threshold of 46 sits in that gap.
A 64-bit hash has no such gap there (different scans from 6 bits on).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.fft import dctn

from braintl.data.preprocess import brain_crop_box

HASH_SIZE = 16  # 16×16 DCT coefficients: a 256-bit hash
HASH_BYTES = HASH_SIZE * HASH_SIZE // 8
DEFAULT_NEAR_DISTANCE = 46
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def pixel_hash(rgb: np.ndarray) -> str:
    """Content hash of decoded pixels: equal for byte-different files with equal pixels."""
    h = hashlib.sha256(f"{rgb.shape}".encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


def perceptual_hash(rgb: np.ndarray) -> str:
    """Frame and brain-box DCT hashes, as one hex string of 2 × 256 bits."""
    y0, y1, x0, x1 = brain_crop_box(rgb)
    return (_dct_hash(rgb) + _dct_hash(rgb[y0:y1, x0:x1])).hex()


def _dct_hash(rgb: np.ndarray) -> bytes:
    size = HASH_SIZE * 4
    grey = Image.fromarray(rgb).convert("L").resize((size, size), Image.Resampling.LANCZOS)
    low = dctn(np.asarray(grey, dtype=np.float64), norm="ortho")[:HASH_SIZE, :HASH_SIZE].ravel()
    return np.packbits(low > np.median(low[1:])).tobytes()


def distance_matrix(phashes: list[str]) -> np.ndarray:
    """Pairwise distances: per pair, the smaller Hamming distance of the two hashes."""
    raw = np.frombuffer(bytes.fromhex("".join(phashes)), dtype=np.uint8)
    both = raw.reshape(len(phashes), 2, HASH_BYTES)
    out = np.empty((len(phashes), len(phashes)), dtype=np.uint16)
    for i in range(len(phashes)):  # row by row keeps memory at N × 64 bytes per step
        bits = _POPCOUNT[both[i] ^ both].sum(axis=2, dtype=np.uint16)
        out[i] = bits.min(axis=1)
    return out


@dataclass(frozen=True)
class Groups:
    """``group[i]`` is image i's group id; ids are ordered by content, not by file name."""

    group: np.ndarray
    exact_pairs: tuple[tuple[int, int], ...]
    near_pairs: tuple[tuple[int, int, int], ...]  # (i, j, distance)


def find_groups(pixel_hashes: list[str], phashes: list[str], max_distance: int) -> Groups:
    """Union exact and near duplicates into groups with content-ordered ids."""
    n = len(pixel_hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first_seen: dict[str, int] = {}
    exact: list[tuple[int, int]] = []
    for i, h in enumerate(pixel_hashes):
        if h in first_seen:
            exact.append((first_seen[h], i))
            union(first_seen[h], i)
        else:
            first_seen[h] = i
    near: list[tuple[int, int, int]] = []
    if max_distance >= 0 and n > 1:
        dist = distance_matrix(phashes)
        ii, jj = np.nonzero(np.triu(dist <= max_distance, k=1))
        for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
            if pixel_hashes[i] != pixel_hashes[j]:
                near.append((i, j, int(dist[i, j])))
                union(i, j)
    roots = [find(i) for i in range(n)]
    # Name each group by its smallest member hash so ids survive renames and reordering.
    key: dict[int, str] = {}
    for i, r in enumerate(roots):
        key[r] = min(key.get(r, pixel_hashes[i]), pixel_hashes[i])
    order = {r: g for g, r in enumerate(sorted(key, key=key.__getitem__))}
    group = np.array([order[r] for r in roots], dtype=np.int64)
    return Groups(group, tuple(exact), tuple(near))
