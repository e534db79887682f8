"""Seeded offline augmentation, as in the seed: rotation, shifts, zoom, shear, flip, brightness.

Reproducible per source image: each copy's random generator is seeded from (seed, the source's
key, copy index), so a scan's copies are the same bytes whatever other scans exist and in
whatever order they come. Under the leak-free protocol the caller augments only training
partitions; every copy carries its source's index, hence its label and group.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

SEED_RAW, SEED_AUGMENTED = 251, 2062  # the seed's raw and augmented set sizes


class AugmentConfig(BaseModel):
    """Offline augmentation: one random affine transform plus a brightness factor per copy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    rotation_deg: float = Field(15.0, ge=0, le=180, description="rotation in ±degrees")
    shift_fraction: float = Field(0.1, ge=0, lt=1, description="shift in ± fraction of the side")
    zoom_range: float = Field(0.1, ge=0, lt=1, description="scale in 1 ± zoom_range")
    shear_deg: float = Field(10.0, ge=0, lt=90, description="shear angle in ±degrees")
    hflip: bool = Field(True, description="mirror left-right with probability 1/2")
    brightness_range: tuple[float, float] = Field(
        (0.8, 1.2), description="intensity factor drawn from [low, high]"
    )
    target_ratio: float = Field(
        SEED_AUGMENTED / SEED_RAW, ge=1, description="images after augmentation / originals"
    )
    balance: bool = Field(True, description="add copies so the classes end near equal")

    @model_validator(mode="after")
    def _check_brightness(self) -> AugmentConfig:
        low, high = self.brightness_range
        if not 0 < low <= high:
            raise ValueError(f"brightness_range {self.brightness_range}: need 0 < low <= high")
        return self


def _affine_inverse(
    rng: np.random.Generator, config: AugmentConfig, width: int, height: int
) -> tuple[float, ...]:
    """Draw one transform; return the output→input matrix that ``Image.transform`` wants.

    Forward map about the centre c: ``p_out = c + t + R·S·Z·F (p_in - c)`` (rotation, shear,
    zoom, flip). Every draw is made whatever the config, so the generator's stream, and thus
    every other parameter, does not depend on which transforms are switched off.
    """
    angle = np.deg2rad(rng.uniform(-config.rotation_deg, config.rotation_deg))
    shift = rng.uniform(-config.shift_fraction, config.shift_fraction, 2) * (width, height)
    zoom = rng.uniform(1 - config.zoom_range, 1 + config.zoom_range)
    shear = np.deg2rad(rng.uniform(-config.shear_deg, config.shear_deg))
    flip = -1.0 if rng.random() < 0.5 and config.hflip else 1.0
    cos, sin = np.cos(angle), np.sin(angle)
    forward = (
        np.array([[cos, -sin], [sin, cos]])
        @ np.array([[1.0, -np.sin(shear)], [0.0, np.cos(shear)]])
        @ np.diag([zoom * flip, zoom])
    )
    inverse = np.linalg.inv(forward)
    centre = np.array([width / 2, height / 2])  # Pillow's pixel centres sit at i + 0.5
    offset = centre - inverse @ (centre + shift)
    return (*inverse[0], offset[0], *inverse[1], offset[1])


def augment_image(rgb: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """One augmented copy of an RGB uint8 H×W×3 image, same shape.

    A single affine resampling (bilinear, black fill like the MRI background) rather than one
    per transform, so the copy is blurred once; then brightness, rounded and clipped.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 H×W×3 array, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    matrix = _affine_inverse(rng, config, width, height)
    factor = rng.uniform(*config.brightness_range)
    image = Image.fromarray(np.ascontiguousarray(rgb))
    moved = image.transform(
        (width, height),
        Image.Transform.AFFINE,
        matrix,
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0),
    )
    out = np.asarray(moved, dtype=np.float32) * np.float32(factor)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _key_code(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


def copy_rng(seed: int, key: str, copy: int, duplicate: int = 0) -> np.random.Generator:
    """The generator of one copy: fixed by (seed, source key, copy index) alone.

    ``duplicate`` tells apart sources that share a key (identical pixels when the key is a
    pixel hash), so their copies still differ; it is left out of the seed when 0.
    """
    entropy = [seed, _key_code(key), copy] + ([duplicate] if duplicate else [])
    return np.random.default_rng(entropy)


def class_targets(counts: dict[int, int], n_target_total: int) -> dict[int, int]:
    """Images per class after augmentation: as equal as possible, summing to the target.

    Water-filling: a class that already has more originals than an equal share keeps them and
    gets no copies; the others share what is left. No class ever shrinks.
    """
    targets: dict[int, int] = {}
    remaining = dict(counts)
    budget = max(n_target_total, sum(counts.values()))
    while remaining:
        share = budget / len(remaining)
        largest = max(remaining, key=lambda c: (remaining[c], -c))
        if remaining[largest] >= share:
            targets[largest] = remaining.pop(largest)
            budget -= targets[largest]
            continue
        base, extra = divmod(budget, len(remaining))
        for rank, cls in enumerate(sorted(remaining)):
            targets[cls] = base + (rank < extra)
        break
    return targets


def plan_augmentation(
    labels: np.ndarray, keys: list[str], n_target_total: int, balance: bool, seed: int
) -> list[tuple[int, int]]:
    """Which copies to make: (source index, copy index) pairs, sorted.

    Originals plus copies reach ``n_target_total`` (when it exceeds the originals). With
    ``balance`` each class is filled towards an equal share (:func:`class_targets`); without,
    copies are spread over all images, which keeps the class ratio. Within a class every source
    gets the same number of copies, ±1; which sources get the extra one is drawn from the seed
    and the keys, so it does not depend on the input order.
    """
    labels = np.asarray(labels)
    if len(labels) != len(keys):
        raise ValueError(f"{len(labels)} labels but {len(keys)} keys")
    classes = labels if balance else np.zeros(len(labels), dtype=np.int64)
    counts = {int(c): int(n) for c, n in zip(*np.unique(classes, return_counts=True), strict=True)}
    targets = class_targets(counts, n_target_total)
    plan: list[tuple[int, int]] = []
    for cls, target in targets.items():
        members = np.flatnonzero(classes == cls)
        order = sorted(members, key=lambda i: (_key_code(f"{seed}:{keys[i]}"), keys[i], i))
        base, extra = divmod(target - len(members), len(members))
        for rank, index in enumerate(order):
            plan.extend((int(index), copy) for copy in range(base + (rank < extra)))
    return sorted(plan)


def augment_images(
    images: list[np.ndarray],
    labels: np.ndarray,
    keys: list[str],
    config: AugmentConfig,
    seed: int,
    n_target_total: int | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Augmented copies of ``images`` and, for each, its source index (label, group follow).

    ``n_target_total`` (originals + copies) defaults to ``config.target_ratio`` × originals.
    Returns only the copies; the originals are the caller's.
    """
    if not config.enabled or not images:
        return [], np.empty(0, dtype=np.int64)
    if n_target_total is None:
        n_target_total = round(len(images) * config.target_ratio)
    plan = plan_augmentation(labels, keys, n_target_total, config.balance, seed)
    seen: Counter[str] = Counter()
    duplicate = []
    for key in keys:  # rank among sources sharing a key, in input order
        duplicate.append(seen[key])
        seen[key] += 1
    sources = [np.ascontiguousarray(image) for image in images]  # once a source, not a copy
    copies = [
        augment_image(sources[i], copy_rng(seed, keys[i], copy, duplicate[i]), config)
        for i, copy in plan
    ]
    return copies, np.array([i for i, _ in plan], dtype=np.int64)
