"""Splits: whole groups per part and stratified under ``groups``; leakage shown under ``paper``."""

from __future__ import annotations

import numpy as np
import pytest

from braintl.data.listing import label_index, list_images
from braintl.data.manifest import scan
from braintl.data.splits import leakage, make_split
from braintl.data.tensors import Split
from braintl.errors import UserError


@pytest.fixture(scope="module")
def real_arrays(real_data):
    manifest = scan(list_images(str(real_data)))
    recs = [manifest.records[i] for i in manifest.usable()]
    labels = np.array([label_index(r.label) for r in recs])
    groups = np.array([r.group for r in recs])
    return labels, groups


def _parts(split: Split, n: int) -> list[np.ndarray]:
    dev = np.setdiff1d(np.arange(n), split.test)
    rest = np.setdiff1d(dev, np.concatenate(split.folds))
    return [split.test, *split.folds, rest]


@pytest.mark.real_data
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("folds", [5, 3, 1])
def test_groups_protocol_never_leaks(real_arrays, seed, folds):
    labels, groups = real_arrays
    split = make_split("groups", labels, groups, folds=folds, test_fraction=0.15, seed=seed)
    assert leakage(split, groups) == 0
    parts = _parts(split, len(labels))
    assert sum(len(p) for p in parts) == len(labels)  # a partition: nothing lost or doubled
    assert len(np.unique(np.concatenate(parts))) == len(labels)
    for k in range(len(split.folds)):
        train, val = split.fold(k, np.zeros(len(labels), bool), groups)
        assert not set(groups[train]) & set(groups[val])
        assert not set(groups[train]) & set(groups[split.test])
    # Stratified: each part's tumor share within 8 points of the whole set's.
    share = labels.mean()
    for part in (split.test, *split.folds):
        assert abs(labels[part].mean() - share) < 0.08
    assert abs(len(split.test) / len(labels) - 0.15) < 0.03


@pytest.mark.real_data
def test_paper_protocol_leaks_and_says_so(real_arrays):
    labels, groups = real_arrays
    split = make_split("paper", labels, groups, folds=5, test_fraction=0.15, seed=0)
    assert split.leaky
    assert leakage(split, groups) > 0


def test_deterministic_for_a_seed_and_different_across_seeds():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    groups = np.arange(300) // 3
    labels = labels[groups * 3]  # one label per group
    a = make_split("groups", labels, groups, 5, 0.15, seed=7)
    b = make_split("groups", labels, groups, 5, 0.15, seed=7)
    c = make_split("groups", labels, groups, 5, 0.15, seed=8)
    assert a.to_json() == b.to_json()
    assert a.to_json() != c.to_json()
    assert Split.from_json(a.to_json()).to_json() == a.to_json()


def test_one_fold_is_the_seeds_70_15_15():
    labels = np.array([0, 1] * 500)
    groups = np.arange(1000)
    split = make_split("paper", labels, groups, folds=1, test_fraction=0.15, seed=0)
    train, val = split.fold(0, np.zeros(1000, bool), groups)
    assert (len(train), len(val), len(split.test)) == (700, 150, 150)


def test_validation_drops_augmented_copies_and_their_groups_from_training():
    groups = np.array([0, 1, 2, 3, 0, 1, 2, 3])  # images 4..7 are copies of 0..3
    augmented = np.array([False] * 4 + [True] * 4)
    split = Split(
        "groups",
        test=np.array([], int),
        folds=(np.array([0, 4]), np.array([1, 2, 3, 5, 6, 7])),
        leaky=False,
    )
    train, val = split.fold(0, augmented, groups)
    assert val.tolist() == [0]
    assert train.tolist() == [1, 2, 3, 5, 6, 7]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"protocol": "random"}, "protocol 'random' unknown"),
        ({"folds": 0}, "folds=0"),
        ({"test_fraction": 0.7}, "test_fraction=0.7"),
    ],
)
def test_bad_parameters(kwargs, message):
    args = {"protocol": "groups", "folds": 5, "test_fraction": 0.15} | kwargs
    with pytest.raises(UserError, match=message):
        make_split(
            args["protocol"], np.zeros(4), np.arange(4), args["folds"], args["test_fraction"]
        )
