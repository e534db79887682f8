"""Splits: a held-out test part and k folds, leak-free by source group or the seed's random way.

``groups`` (default): whole source groups go to one part, stratified by label, so no scan
and no copy of it is both trained on and tested on. ``paper``: the seed's protocol, a
random split over images after augmentation; copies of one scan land in several parts, so
it is kept only for comparison and marked leaky.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from braintl.data.tensors import Split
from braintl.errors import UserError

PROTOCOLS = ("groups", "paper")


def check_split_params(protocol: str, folds: int, test_fraction: float) -> None:
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol {protocol!r} unknown: choose one of {', '.join(PROTOCOLS)}")
    if not 1 <= folds <= 20:
        raise UserError(f"folds={folds}: choose 1 (one validation part) to 20")
    if not 0.0 < test_fraction < 0.5:
        raise UserError(f"test_fraction={test_fraction}: choose a value in (0, 0.5), e.g. 0.15")


def _part_shares(folds: int, test_fraction: float) -> np.ndarray:
    """Shares of all images: test first, then the folds. ``folds=1`` means one validation
    part the size of the test part after a training-only part (the seed's 70/15/15 when
    test_fraction is 0.15)."""
    dev = 1 - test_fraction
    if folds == 1:
        return np.array([test_fraction, dev - test_fraction, test_fraction])
    return np.array([test_fraction] + [dev / folds] * folds)


def split_by_group(
    labels: np.ndarray, groups: np.ndarray, folds: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Assign whole groups to the test part and to folds, per label, by image count.

    Groups are visited in a seeded random order; each goes to the part furthest below its
    target share of that label's images. Returns (test indices, fold index arrays).
    """
    rng = np.random.default_rng(seed)
    group_label: dict[int, int] = {}
    members: dict[int, list[int]] = defaultdict(list)
    for i, (g, y) in enumerate(zip(groups.tolist(), labels.tolist(), strict=True)):
        if group_label.setdefault(g, y) != y:
            raise ValueError(f"group {g} mixes labels; label conflicts must be removed first")
        members[g].append(i)
    shares = _part_shares(folds, test_fraction)
    parts: list[list[int]] = [[] for _ in shares]
    for label in sorted(set(group_label.values())):
        label_groups = sorted(g for g, y in group_label.items() if y == label)
        order = rng.permutation(len(label_groups))
        total = sum(len(members[g]) for g in label_groups)
        filled = np.zeros(len(shares))
        for k in order:
            g = label_groups[k]
            deficit = shares * total - filled
            part = int(np.argmax(deficit))
            parts[part].extend(members[g])
            filled[part] += len(members[g])
    return _finish(parts, folds)


def split_random(
    labels: np.ndarray, folds: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The seed's protocol: a stratified random split over images, groups ignored."""
    rng = np.random.default_rng(seed)
    shares = _part_shares(folds, test_fraction)
    parts: list[list[int]] = [[] for _ in shares]
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.rint(np.cumsum(shares) * len(idx)).astype(int)
        for p, chunk in enumerate(np.split(idx, bounds[:-1])):
            parts[p].extend(chunk.tolist())
    return _finish(parts, folds)


def _finish(parts: list[list[int]], folds: int) -> tuple[np.ndarray, list[np.ndarray]]:
    arrays = [np.array(sorted(p), dtype=np.int64) for p in parts]
    # With one fold, part 1 only trains: it is the remainder, not a fold.
    return arrays[0], arrays[2:] if folds == 1 else arrays[1:]


def make_split(
    protocol: str,
    labels: np.ndarray,
    groups: np.ndarray,
    folds: int = 5,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> Split:
    check_split_params(protocol, folds, test_fraction)
    if protocol == "groups":
        test, dev = split_by_group(labels, groups, folds, test_fraction, seed)
    else:
        test, dev = split_random(labels, folds, test_fraction, seed)
    return Split(protocol=protocol, test=test, folds=tuple(dev), leaky=protocol == "paper")


def parts(split: Split, n: int) -> dict[str, np.ndarray]:
    """Every part by name: ``test``, ``fold0``..., and (with one fold) the training-only
    ``train`` remainder; ``n`` images in all."""
    dev = np.setdiff1d(np.arange(n), split.test)
    named = {"test": split.test} | {f"fold{k}": fold for k, fold in enumerate(split.folds)}
    remainder = np.setdiff1d(dev, np.concatenate(split.folds))
    return named | ({"train": remainder} if len(remainder) else {})


def members(split: Split, n: int, files: list[str]) -> dict[str, list[str]]:
    """Each part's original files (the first ``len(files)`` of ``n`` images; augmented copies
    follow them and are left out), so anyone can recompute leakage."""
    return {
        name: [files[i] for i in idx.tolist() if i < len(files)]
        for name, idx in parts(split, n).items()
    }


def leakage(split: Split, groups: np.ndarray) -> int:
    """Number of source groups present in more than one part (:func:`parts`)."""
    seen: dict[int, set[str]] = defaultdict(set)
    for part, idx in parts(split, len(groups)).items():
        for g in np.unique(groups[idx]).tolist():
            seen[g].add(part)
    return sum(1 for where in seen.values() if len(where) > 1)
