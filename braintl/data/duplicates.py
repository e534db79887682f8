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


def _hash_words(phashes: list[str]) -> np.ndarray:
    """N × 2 × 4 uint64: each image's two 256-bit hashes as machine words, for fast popcounts."""
    raw = np.frombuffer(bytes.fromhex("".join(phashes)), dtype=np.uint64)
    return raw.reshape(len(phashes), 2, HASH_BYTES // 8)


def _distances(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """len(rows) × len(cols) distances: per pair, the smaller of the two hashes' distances."""
    bits = np.bitwise_count(rows[:, None] ^ cols[None, :]).sum(axis=3, dtype=np.uint16)
    return bits.min(axis=2)


def distance_matrix(phashes: list[str]) -> np.ndarray:
    """Pairwise distances: per pair, the smaller Hamming distance of the two hashes."""
    words = _hash_words(phashes)
    return _distances(words, words)


def near_pairs(phashes: list[str], max_distance: int, pairs_per_step: int = 1 << 20) -> np.ndarray:
    """(i, j, distance) rows, i < j, of every pair within ``max_distance`` bits.

    A block of rows at a time over the upper triangle: memory stays near ``pairs_per_step``
    × 64 bytes however many images there are (one N × N matrix of 100 000 images: 20 GB).
    """
    words = _hash_words(phashes)
    block = max(1, pairs_per_step // max(1, len(words)))
    found = [np.empty((0, 3), dtype=np.int64)]
    for start in range(0, len(words), block):
        dist = _distances(words[start : start + block], words[start:])
        ii, jj = np.nonzero(dist <= max_distance)
        keep = jj > ii  # the upper triangle: each pair once, no self-pairs
        i, j = ii[keep] + start, jj[keep] + start
        found.append(np.stack([i, j, dist[ii[keep], jj[keep]]], axis=1).astype(np.int64))
    return np.concatenate(found)


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
        for i, j, d in near_pairs(phashes, max_distance).tolist():
            if pixel_hashes[i] != pixel_hashes[j]:
                near.append((i, j, d))
                union(i, j)
    roots = [find(i) for i in range(n)]
    # Name each group by its smallest member hash so ids survive renames and reordering.
    key: dict[int, str] = {}
    for i, r in enumerate(roots):
        key[r] = min(key.get(r, pixel_hashes[i]), pixel_hashes[i])
    order = {r: g for g, r in enumerate(sorted(key, key=key.__getitem__))}
    group = np.array([order[r] for r in roots], dtype=np.int64)
    return Groups(group, tuple(exact), tuple(near))
