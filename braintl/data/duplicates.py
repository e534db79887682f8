"""Exact copies, near duplicates and transformed copies, joined into source groups.

Exact: identical decoded pixels (a SHA-256 of shape and pixels, so re-saving a PNG or
renaming a file changes nothing). Near: 256-bit DCT perceptual hashes within a Hamming
distance. Transformed: augmented copies (flipped, rotated, shifted, zoomed, brightened), whose
``signature`` lies within :data:`~braintl.data.signature.COPY_DISTANCE`. Any chain of such pairs
is one source group: the unit that splits must keep whole.

Each image gets two perceptual hashes, of the whole frame and of the brain's bounding box,
and a pair's distance is the smaller of the two: the frame hash catches re-encodes and
resizes, the brain hash catches crops and re-framed copies. On the real set
(../shared/data/brain_mri) every true copy lies within 40 bits, the first different scan at
54 and the first pair of different labels at 62; the default threshold of 46 sits in that gap.
A 64-bit hash has no such gap there (different scans from 6 bits on).

The hashes see few augmented copies (30% on brain_mri_augmented) and, on such data, join a few
different scans at 42-46 bits. So a hash pair whose signatures lie beyond
:data:`~braintl.data.signature.CONTRADICTS` is not joined but reported: it is the evidence that
``--near-distance`` is too loose for the data (on brain_mri every hash pair from 54 bits on).
All pairs are found a block of rows at a time: no N × N matrix, whatever N.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.fft import dctn

from braintl.data import signature as sig
from braintl.data.preprocess import head_box

HASH_SIZE = 16  # 16×16 DCT coefficients: a 256-bit hash
HASH_BYTES = HASH_SIZE * HASH_SIZE // 8
DEFAULT_NEAR_DISTANCE = 46
PRE_AUGMENTED_MEDIAN = 3  # see copy_stats


def pixel_hash(rgb: np.ndarray) -> str:
    """Content hash of decoded pixels: equal for byte-different files with equal pixels."""
    h = hashlib.sha256(f"{rgb.shape}".encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


def perceptual_hash(rgb: np.ndarray) -> str:
    """Frame and brain-box DCT hashes, as one hex string of 2 × 256 bits."""
    grey = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))
    y0, y1, x0, x1 = head_box(grey)
    return (_dct_hash(grey) + _dct_hash(grey[y0:y1, x0:x1])).hex()


def _dct_hash(grey: np.ndarray) -> bytes:
    size = HASH_SIZE * 4
    small = Image.fromarray(grey).resize((size, size), Image.Resampling.LANCZOS)
    low = dctn(np.asarray(small, dtype=np.float64), norm="ortho")[:HASH_SIZE, :HASH_SIZE].ravel()
    return np.packbits(low > np.median(low[1:])).tobytes()


def _hash_words(phashes: list[str]) -> np.ndarray:
    """N × 2 × 4 uint64: each image's two 256-bit hashes as machine words, for fast popcounts."""
    raw = np.frombuffer(bytes.fromhex("".join(phashes)), dtype=np.uint64)
    return raw.reshape(len(phashes), 2, HASH_BYTES // 8)


def _distances(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """len(rows) × len(cols) distances: per pair, the smaller of the two hashes' distances."""
    bits = np.bitwise_count(rows[:, None] ^ cols[None, :]).sum(axis=3, dtype=np.uint16)
    return bits.min(axis=2)


def _blocked_pairs(
    items: np.ndarray,
    distances: Callable[[np.ndarray, np.ndarray], np.ndarray],
    max_distance: float,
    pairs_per_step: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(pairs K × 2, their distances) of i < j within ``max_distance``.

    A block of rows at a time over the upper triangle: memory stays near ``pairs_per_step``
    distances however many items there are (one N × N matrix of 100 000 images: 20 GB).
    """
    block = max(1, pairs_per_step // max(1, len(items)))
    pairs, found = [np.empty((0, 2), dtype=np.int64)], [np.empty(0)]
    for start in range(0, len(items), block):
        dist = distances(items[start : start + block], items[start:])
        ii, jj = np.nonzero(dist <= max_distance)
        keep = jj > ii  # the upper triangle: each pair once, no self-pairs
        pairs.append(np.stack([ii[keep] + start, jj[keep] + start], axis=1).astype(np.int64))
        found.append(dist[ii[keep], jj[keep]])
    return np.concatenate(pairs), np.concatenate(found)


def near_pairs(phashes: list[str], max_distance: int, pairs_per_step: int = 1 << 20) -> np.ndarray:
    """(i, j, distance) rows, i < j, of every pair within ``max_distance`` bits."""
    pairs, bits = _blocked_pairs(_hash_words(phashes), _distances, max_distance, pairs_per_step)
    return np.column_stack([pairs, bits]).astype(np.int64)


def copy_pairs(
    signatures: np.ndarray, max_distance: float, pairs_per_step: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """(pairs, distances) of every pair whose signatures lie within ``max_distance``."""
    return _blocked_pairs(signatures, sig.distances, max_distance, pairs_per_step)


@dataclass(frozen=True)
class Groups:
    """``group[i]`` is image i's group id; ids are ordered by content, not by file name."""

    group: np.ndarray
    exact_pairs: tuple[tuple[int, int], ...]
    near_pairs: tuple[tuple[int, int, int], ...]  # (i, j, bits): hash pairs, joined
    copy_pairs: tuple[tuple[int, int, float], ...] = ()  # (i, j, signature distance), joined
    contradicted_pairs: tuple[tuple[int, int, int, float], ...] = ()  # (i, j, bits, sig): apart
    provenance_pairs: tuple[tuple[int, int], ...] = ()  # (i, j): one provenance group, joined
    # Groups of copies only, before provenance joins (one patient's slices are not copies).
    copy_group: np.ndarray | None = None


def find_groups(
    pixel_hashes: list[str],
    phashes: list[str],
    max_distance: int,
    signatures: np.ndarray | None = None,
    copy_distance: float = sig.COPY_DISTANCE,
    provenance: list[str] | None = None,
) -> Groups:
    """Union exact, near and transformed copies into groups with content-ordered ids.

    ``signatures`` (N × :data:`~braintl.data.signature.SIZE`) add the transformed copies and
    the check of hash pairs; without them only the hashes count. ``copy_distance`` < 0: no
    transformed copies, the check stays. ``provenance`` names each image's source ("" for
    none, see ``provenance``): images of one name are joined last, so the pixel pairs found
    are the same with and without it.
    """
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

    def join_equal(keys: list[str]) -> list[tuple[int, int]]:
        """(first image with the key, image) for every later image of a non-empty key."""
        first_seen: dict[str, int] = {}
        pairs: list[tuple[int, int]] = []
        for i, key in enumerate(keys):
            if key in first_seen:
                pairs.append((first_seen[key], i))
                union(first_seen[key], i)
            elif key:
                first_seen[key] = i
        return pairs

    exact = join_equal(pixel_hashes)
    near: list[tuple[int, int, int]] = []
    contradicted: list[tuple[int, int, int, float]] = []
    if max_distance >= 0 and n > 1:
        rows = near_pairs(phashes, max_distance)
        rows = rows[[pixel_hashes[i] != pixel_hashes[j] for i, j in rows[:, :2].tolist()]]
        apart = np.zeros(len(rows))
        if signatures is not None:
            apart = sig.pair_distances(signatures, rows[:, :2])
        for (i, j, d), s in zip(rows.tolist(), apart.tolist(), strict=True):
            if s > sig.CONTRADICTS:
                contradicted.append((i, j, d, round(s, 3)))
            else:
                near.append((i, j, d))
                union(i, j)
    copies: list[tuple[int, int, float]] = []
    if signatures is not None and copy_distance >= 0 and n > 1:
        pairs, dist = copy_pairs(signatures, copy_distance)
        for (i, j), d in zip(pairs.tolist(), dist.tolist(), strict=True):
            if find(i) != find(j):
                copies.append((i, j, round(d, 3)))
                union(i, j)
    copy_roots = [find(i) for i in range(n)]
    named = join_equal(provenance or [])
    roots = [find(i) for i in range(n)]
    # Name each group by its smallest member hash so ids survive renames and reordering.
    key: dict[int, str] = {}
    for i, r in enumerate(roots):
        key[r] = min(key.get(r, pixel_hashes[i]), pixel_hashes[i])
    order = {r: g for g, r in enumerate(sorted(key, key=key.__getitem__))}
    group = np.array([order[r] for r in roots], dtype=np.int64)
    copy_group = np.unique(np.array(copy_roots, dtype=np.int64), return_inverse=True)[1]
    return Groups(
        group,
        tuple(exact),
        tuple(near),
        tuple(copies),
        tuple(contradicted),
        tuple(named),
        copy_group.reshape(n),
    )


def copy_stats(group: np.ndarray) -> dict:
    """How much of a data set is copies of something else in it.

    Natural duplicates are the exception and come in pairs (brain_mri: median group size 1);
    offline augmentation gives every source several copies (the seed's set: about 8). So a
    folder looks pre-augmented when at least half of its images sit in a group of
    :data:`PRE_AUGMENTED_MEDIAN` or more, i.e. the median image has two other copies.
    """
    size_of = np.bincount(group)[group] if len(group) else np.ones(1, dtype=np.int64)
    median = float(np.median(size_of))
    return {
        "pre_augmented": median >= PRE_AUGMENTED_MEDIAN,
        "images_in_groups": round(float((size_of > 1).mean()), 4),
        "median_group_size": median,
        "largest_group": int(size_of.max()),
    }
