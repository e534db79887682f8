"""Build, or reuse, everything training needs from a data URL: the tensor cache.

list → decode, check and hash (one pass, pixels preprocessed on the way) → split →
augment (only training partitions under ``groups``) → uint8 tensors written once under
``OUT_URL/cache/<key>/``, where the key is a hash of the data fingerprint, every setting
that changes the tensors and the source of ``braintl.data`` (the code that computes them: a
fixed augmentation builds new tensors). A second run with the same data and settings decodes
the files to recompute the fingerprint, then reuses the cache instead of rebuilding it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from braintl.codeversion import PACKAGE, source_hash
from braintl.data.augment import AugmentConfig, augment_images
from braintl.data.clinical import ClinicalConfig
from braintl.data.decode import Decoded, DecodeLimits
from braintl.data.duplicates import DEFAULT_NEAR_DISTANCE
from braintl.data.listing import DEFAULT_LABEL_MAP, label_index, list_images
from braintl.data.manifest import Manifest, scan
from braintl.data.preprocess import PreprocessConfig, preprocess
from braintl.data.provenance import GroupBy, Provenance, read_provenance
from braintl.data.signature import COPY_DISTANCE
from braintl.data.splits import PROTOCOLS, leakage, make_split
from braintl.data.tensors import Split, TensorSet
from braintl.errors import UserError
from braintl.limits import check_data_size
from braintl.storage import Location, resolve

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# Settings that only let a build go ahead or stop it: they never change the tensors.
GUARDS = {"max_images", "memory_budget_gb"}


class DataConfig(BaseModel):
    """Every setting of the data pipeline; the cache key covers all but the label map's
    folder names (labels themselves are in the fingerprint)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label_map: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_LABEL_MAP))
    min_side: int = Field(32, ge=1, description="smaller images are quarantined (px a side)")
    max_pixels: int = Field(64_000_000, ge=1024, description="larger images are quarantined")
    max_bytes: int = Field(
        DecodeLimits.max_bytes, ge=1, description="larger files are quarantined unread"
    )
    near_distance: int = Field(
        DEFAULT_NEAR_DISTANCE, ge=-1, le=256, description="perceptual-hash bits; -1 = off"
    )
    copy_distance: float = Field(
        COPY_DISTANCE, ge=-1, description="signature distance of transformed copies; -1 = off"
    )
    group_by: GroupBy = Field(
        None, description="regex over paths under DATA_URL; equal (?P<group>...) = one source"
    )
    manifest_url: str | None = Field(
        None, description="CSV path,label,group (or patient): labels and source groups"
    )
    max_images: int = Field(100_000, ge=2, description="more listed files fail before decoding")
    memory_budget_gb: float | None = Field(
        None, gt=0, description="tensors allowed while preparing; None: half this machine's RAM"
    )
    protocol: str = Field("groups", pattern="^(" + "|".join(PROTOCOLS) + ")$")
    folds: int = Field(5, ge=1, le=20)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    seed: int = 0
    preprocess: PreprocessConfig = PreprocessConfig()
    clinical: ClinicalConfig = ClinicalConfig()
    augment: AugmentConfig = AugmentConfig()

    def cache_key(self, fingerprint: str) -> str:
        settings = self.model_dump(exclude={"label_map", *GUARDS})
        code = source_hash(PACKAGE / "data")
        blob = json.dumps(
            {"v": CACHE_VERSION, "code": code, "data": fingerprint, **settings}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(self.min_side, self.max_pixels, self.max_bytes)

    def provenance(self) -> Provenance:
        return read_provenance(self.group_by, self.manifest_url, self.label_map)


@dataclass(frozen=True)
class Prepared:
    tensors_url: str
    key: str
    reused: bool
    manifest: Manifest
    meta: dict


def scan_data(data_url: str, config: DataConfig) -> tuple[Manifest, dict[str, np.ndarray]]:
    """The manifest, and the preprocessed pixels of every usable image by record path."""
    listing = list_images(data_url, config.label_map, config.max_images)
    augment_ratio = config.augment.target_ratio if config.augment.enabled else 1.0
    check_data_size(
        len(listing.images),
        config.preprocess.image_size,
        augment_ratio,
        config.memory_budget_gb,
        listing.root,
    )
    pixels: dict[str, np.ndarray] = {}

    def keep(relpath: str, decoded: Decoded) -> None:
        pixels[relpath] = preprocess(decoded.rgb, config.preprocess)

    manifest = scan(
        listing,
        config.decode_limits(),
        config.near_distance,
        config.copy_distance,
        on_image=keep,
        provenance=config.provenance(),
        memory_budget_gb=config.memory_budget_gb,
        clinical=config.clinical,
    )
    for note in manifest.notes():
        log.warning(note)
    if len({manifest.records[i].label for i in manifest.usable()}) < 2:
        raise UserError(
            f"{listing.root}: fewer than two labels have usable images after validation "
            f"({len(manifest.summary()['quarantined'])} quarantined). Run `braintl data "
            "inspect` to see why, and fix or replace those files."
        )
    return manifest, pixels


def prepare(
    data_url: str,
    out_url: str,
    config: DataConfig | None = None,
    before_write: Callable[[], None] | None = None,
) -> Prepared:
    """Make sure the tensor cache for ``data_url`` and ``config`` exists under ``out_url``.

    ``before_write`` runs once the tensors are built, before anything is written: a caller
    that started early can wait there for the go-ahead (or raise to write nothing)."""
    config = config or DataConfig()
    start = time.perf_counter()
    manifest, pixels = scan_data(data_url, config)
    key = config.cache_key(manifest.fingerprint)
    target = resolve(out_url).join("cache", key)
    if target.is_complete():
        meta = target.join("meta.json").read_json()
        return Prepared(target.url, key, True, manifest, meta)
    tensors = build_tensors(manifest, pixels, config)
    meta = {
        **tensors.meta,
        "key": key,
        "data_url": manifest.root,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if before_write is not None:
        before_write()
    _write(target, TensorSet(**{**tensors.__dict__, "meta": meta}), manifest)
    return Prepared(target.url, key, False, manifest, meta)


def build_tensors(
    manifest: Manifest, pixels: dict[str, np.ndarray], config: DataConfig
) -> TensorSet:
    """Split, augment and stack the usable images (see the module docstring)."""
    usable = manifest.usable()
    records = [manifest.records[i] for i in usable]
    images = [pixels[r.relpath].transpose(1, 2, 0) for r in records]  # H×W×C for augmentation
    labels = np.array([label_index(r.label) for r in records], dtype=np.int64)
    groups = np.array([r.group for r in records], dtype=np.int64)
    keys = [r.pixel_hash for r in records]
    if config.protocol == "groups":
        # Split the originals by group first; augment only what may be trained on.
        split = make_split(
            "groups", labels, groups, config.folds, config.test_fraction, config.seed
        )
        dev = np.setdiff1d(np.arange(len(records)), split.test)
        extra, sources = _augment(images, labels, keys, dev, config)
        fold_of = np.full(len(records), -1)
        for k, fold in enumerate(split.folds):
            fold_of[fold] = k
        new_ids = len(records) + np.arange(len(sources))
        folds = tuple(
            np.sort(np.concatenate([fold, new_ids[fold_of[sources] == k]]))
            for k, fold in enumerate(split.folds)
        )
        split = Split(split.protocol, split.test, folds, split.leaky)
    else:
        # The seed's protocol: augment everything, then split the images at random.
        extra, sources = _augment(images, labels, keys, np.arange(len(records)), config)
        all_labels = np.concatenate([labels, labels[sources]])
        all_groups = np.concatenate([groups, groups[sources]])
        split = make_split(
            "paper", all_labels, all_groups, config.folds, config.test_fraction, config.seed
        )
    all_images = np.stack(images + extra).transpose(0, 3, 1, 2)
    tensors = TensorSet(
        images=np.ascontiguousarray(all_images),
        labels=np.concatenate([labels, labels[sources]]),
        groups=np.concatenate([groups, groups[sources]]),
        augmented=np.concatenate([np.zeros(len(labels), bool), np.ones(len(sources), bool)]),
        split=split,
        meta={},
    )
    meta = {
        "fingerprint": manifest.fingerprint,
        "config": config.model_dump(),
        "n": len(tensors),
        "originals": len(records),
        "augmented": len(sources),
        "image_size": config.preprocess.image_size,
        "parts": part_sizes(tensors),
        "leakage": leakage(split, tensors.groups),
        "leaky": split.leaky,
        "protocol": split.protocol,
        "files": [r.relpath for r in records],
    }
    return TensorSet(**{**tensors.__dict__, "meta": meta})


def _augment(
    images: list[np.ndarray],
    labels: np.ndarray,
    keys: list[str],
    pool: np.ndarray,
    config: DataConfig,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Augmented copies of the images in ``pool``, and each copy's source index."""
    if not config.augment.enabled or len(pool) == 0:
        return [], np.empty(0, dtype=np.int64)
    n_target = round(len(pool) * config.augment.target_ratio)
    extra, local = augment_images(
        [images[i] for i in pool],
        labels[pool],
        [keys[i] for i in pool],
        config.augment,
        config.seed,
        n_target,
    )
    return list(extra), pool[np.asarray(local, dtype=np.int64)]


def part_sizes(tensors: TensorSet) -> dict:
    """Image counts per part and label, as training will see them for fold 0 and overall."""
    names = {1: "tumor", 0: "no_tumor"}

    def count(idx: np.ndarray) -> dict:
        return {names[y]: int((tensors.labels[idx] == y).sum()) for y in (1, 0)} | {
            "total": int(len(idx))
        }

    sizes = {"test": count(tensors.split.test)}
    for k, fold in enumerate(tensors.split.folds):
        train, val = tensors.fold(k)
        sizes[f"fold{k}"] = {"fold": count(fold), "train": count(train), "val": count(val)}
    return sizes


def _write(target: Location, tensors: TensorSet, manifest: Manifest) -> None:
    """Write the manifest and tensors; on any failure remove the partial folder."""
    try:
        target.join("manifest.json").write_json(manifest.to_json())
        tensors.save(target)
    except BaseException:
        with contextlib.suppress(OSError):
            target.fs.rm(target.path, recursive=True)
        raise
