"""Offline augmentation: reproducible per source, balanced plans, labels and sources kept."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
from pydantic import ValidationError

from braintl.data.augment import (
    AugmentConfig,
    augment_image,
    augment_images,
    class_targets,
    plan_augmentation,
)
from braintl.data.phantoms import make_phantom

OFF = {"rotation_deg": 0, "shift_fraction": 0, "zoom_range": 0, "shear_deg": 0, "hflip": False}


def _images(n: int, size: int = 32) -> list[np.ndarray]:
    return [make_phantom(np.random.default_rng(i), i % 2 == 0, size=size) for i in range(n)]


def _by_copy(copies, sources, keys) -> dict[tuple[str, int], bytes]:
    """(source key, copy index) → bytes; copies of one source come in copy order."""
    seen: Counter[int] = Counter()
    out = {}
    for img, src in zip(copies, sources, strict=True):
        out[(keys[src], seen[src])] = img.tobytes()
        seen[src] += 1
    return out


def test_config_defaults_and_validation():
    config = AugmentConfig()
    assert config.target_ratio == pytest.approx(2062 / 251)
    assert (config.rotation_deg, config.shift_fraction, config.zoom_range) == (15, 0.1, 0.1)
    assert (config.shear_deg, config.hflip, config.brightness_range) == (10, True, (0.8, 1.2))
    assert config.enabled and config.balance
    assert AugmentConfig.model_validate(config.model_dump()) == config
    with pytest.raises(ValidationError):
        AugmentConfig(brightness_range=(1.2, 0.8))
    with pytest.raises(ValidationError):
        AugmentConfig(target_ratio=0.5)
    with pytest.raises(ValidationError):
        config.enabled = False


def test_identity_transform_is_exact():
    img = _images(1, 48)[0]
    config = AugmentConfig(**OFF, brightness_range=(1.0, 1.0))
    assert np.array_equal(augment_image(img, np.random.default_rng(0), config), img)


def test_flip_mirrors_about_the_centre_and_brightness_scales():
    img = _images(1, 40)[0][:, :37]  # odd width, not contiguous
    config = AugmentConfig(**{**OFF, "hflip": True}, brightness_range=(1.0, 1.0))
    outs = [augment_image(img, np.random.default_rng(s), config) for s in range(8)]
    flipped = [np.array_equal(o, img[:, ::-1]) for o in outs]
    assert all(f or np.array_equal(o, img) for f, o in zip(flipped, outs, strict=True))
    assert any(flipped) and not all(flipped)
    half = AugmentConfig(**OFF, brightness_range=(0.5, 0.5))
    dim = augment_image(img, np.random.default_rng(0), half)
    assert np.abs(dim.astype(int) - img.astype(int) * 0.5).max() <= 0.5


def test_transform_keeps_shape_and_fills_black():
    img = np.full((30, 50, 3), 200, dtype=np.uint8)
    config = AugmentConfig(rotation_deg=15, shift_fraction=0.1, brightness_range=(1.0, 1.0))
    outs = [augment_image(img, np.random.default_rng(s), config) for s in range(5)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    assert all((o == 0).any() for o in outs)  # rotated or shifted in from outside: black
    assert all(o[12:18, 20:30].min() > 150 for o in outs)  # the centre stays content


def test_same_seed_same_bytes_different_seed_different():
    images, labels = _images(6), np.array([1, 0, 1, 0, 1, 1])
    keys = [f"img{i}" for i in range(6)]
    a, src_a = augment_images(images, labels, keys, AugmentConfig(), seed=0, n_target_total=20)
    b, src_b = augment_images(images, labels, keys, AugmentConfig(), seed=0, n_target_total=20)
    c, _ = augment_images(images, labels, keys, AugmentConfig(), seed=1, n_target_total=20)
    assert len(a) == 14 and np.array_equal(src_a, src_b)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))
    assert np.stack(a).tobytes() != np.stack(c).tobytes()
    assert all(x.shape == images[0].shape and x.dtype == np.uint8 for x in a)


def test_copies_do_not_depend_on_other_images_or_their_order():
    images, labels = _images(6), np.array([1, 0, 1, 0, 1, 0])
    keys = [f"img{i}" for i in range(6)]
    config = AugmentConfig()
    full = _by_copy(*augment_images(images, labels, keys, config, 3, 18), keys)
    order = [4, 1, 2]  # fewer images, shuffled
    sub_keys = [keys[i] for i in order]
    copies, sources = augment_images(
        [images[i] for i in order], labels[order], sub_keys, config, 3, 9
    )
    sub = _by_copy(copies, sources, sub_keys)
    shared = sub.keys() & full.keys()
    assert len(shared) >= 3 and all(full[k] == sub[k] for k in shared)


def test_duplicate_keys_still_give_different_copies():
    img = _images(1)[0]
    copies, sources = augment_images(
        [img, img], np.array([0, 0]), ["k", "k"], AugmentConfig(), 0, 4
    )
    assert sorted(sources.tolist()) == [0, 1]
    assert copies[0].tobytes() != copies[1].tobytes()


def test_plan_balances_the_seed_sized_set():
    labels = np.array([1] * 155 + [0] * 98)
    keys = [f"Y{i}" for i in range(155)] + [f"N{i}" for i in range(98)]
    plan = plan_augmentation(labels, keys, 2078, balance=True, seed=0)
    assert len(plan) == 2078 - 253
    per_source = Counter(src for src, _ in plan)
    totals = Counter(labels.tolist())
    for src, _ in plan:
        totals[int(labels[src])] += 1
    assert totals == {1: 1039, 0: 1039}
    for label in (0, 1):  # copies spread evenly over each class's sources
        counts = [per_source[i] for i in np.flatnonzero(labels == label)]
        assert max(counts) - min(counts) <= 1
    for src in per_source:  # copy indices run 0..n-1 for each source
        assert sorted(c for s, c in plan if s == src) == list(range(per_source[src]))


def test_plan_is_deterministic_and_order_free():
    labels = np.array([1] * 7 + [0] * 4)
    keys = [f"f{i}" for i in range(11)]
    plan = plan_augmentation(labels, keys, 40, True, seed=5)
    assert plan == plan_augmentation(labels, keys, 40, True, seed=5)
    perm = np.random.default_rng(0).permutation(11)
    shuffled = plan_augmentation(labels[perm], [keys[i] for i in perm], 40, True, seed=5)
    assert sorted((keys[perm[s]], c) for s, c in shuffled) == sorted((keys[s], c) for s, c in plan)


def test_plan_edge_cases():
    labels = np.array([1] * 155 + [0] * 98)
    keys = [str(i) for i in range(253)]
    # A class above its equal share gets no copies; the other fills up to the target.
    plan = plan_augmentation(labels, keys, 300, True, 0)
    assert len(plan) == 47 and all(labels[s] == 0 for s, _ in plan)
    assert plan_augmentation(labels, keys, 200, True, 0) == []  # target below the originals
    # Without balancing the class ratio stays.
    unbalanced = Counter(int(labels[s]) for s, _ in plan_augmentation(labels, keys, 2530, False, 0))
    assert unbalanced == {1: 1395, 0: 882}
    assert class_targets({0: 98, 1: 155}, 2079) == {0: 1040, 1: 1039}
    with pytest.raises(ValueError, match="labels but"):
        plan_augmentation(labels, keys[:5], 300, True, 0)


def test_default_target_and_disabled():
    images, labels, keys = _images(4), np.array([1, 1, 0, 0]), list("abcd")
    copies, sources = augment_images(images, labels, keys, AugmentConfig(), seed=0)
    assert len(copies) == round(4 * 2062 / 251) - 4
    assert Counter(labels[sources].tolist()) == {0: 15, 1: 14}  # 17 + 16 with the originals
    none, src = augment_images(images, labels, keys, AugmentConfig(enabled=False), seed=0)
    assert none == [] and src.dtype == np.int64 and len(src) == 0


def test_copies_keep_their_sources_label_and_content():
    images, labels = _images(4), np.array([1, 0, 1, 0])
    config = AugmentConfig(**OFF, brightness_range=(1.0, 1.0))
    copies, sources = augment_images(images, labels, list("abcd"), config, 0, 12)
    for img, src in zip(copies, sources, strict=True):
        assert np.array_equal(img, images[src])  # an identity transform reproduces the source
    by_source = defaultdict(int)
    for src in sources:
        by_source[int(src)] += 1
    assert sorted(by_source.values()) == [2, 2, 2, 2]
