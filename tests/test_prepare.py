"""Prepare: the tensor cache is built once, reused, leak-free, and never half-written."""

from __future__ import annotations

import numpy as np
import pytest

from braintl.data.prepare import DataConfig, prepare
from braintl.data.splits import leakage
from braintl.data.tensors import TensorSet
from braintl.storage import StorageError, resolve

SMALL = {"preprocess": {"image_size": 48}}


def test_builds_then_reuses(tmp_path, phantom_dir):
    config = DataConfig(**SMALL)
    first = prepare(str(phantom_dir), str(tmp_path / "out"), config)
    assert not first.reused
    assert first.tensors_url.startswith(str(tmp_path / "out" / "cache"))
    second = prepare(str(phantom_dir), str(tmp_path / "out"), config)
    assert second.reused and second.key == first.key
    tensors = TensorSet.load(first.tensors_url)
    assert tensors.images.dtype == np.uint8 and tensors.images.shape[1:] == (3, 48, 48)
    assert len(tensors) == first.meta["n"]
    # Another setting, another key.
    other = prepare(str(phantom_dir), str(tmp_path / "out"), DataConfig(seed=1, **SMALL))
    assert other.key != first.key


def test_groups_protocol_augments_training_partitions_only(tmp_path, phantom_dir):
    prepared = prepare(str(phantom_dir), str(tmp_path), DataConfig(**SMALL))
    t = TensorSet.load(prepared.tensors_url)
    originals = (~t.augmented).sum()
    assert originals == 48
    # Expanded by about the seed's ratio (2062/251), counted over the development part.
    dev = originals - len(t.split.test)
    assert t.augmented.sum() == pytest.approx(dev * 2062 / 251 - dev, abs=3)
    assert not t.augmented[t.split.test].any()
    assert leakage(t.split, t.groups) == 0
    for k in range(len(t.split.folds)):
        train, val = t.fold(k)
        assert not t.augmented[val].any()
        assert not set(t.groups[train]) & set(t.groups[val])
        assert not set(t.groups[train]) & set(t.groups[t.split.test])
    # Copies keep the label of their source group.
    for g in np.unique(t.groups):
        assert len(set(t.labels[t.groups == g])) == 1


def test_paper_protocol_augments_then_splits_and_leaks(tmp_path, phantom_dir):
    prepared = prepare(str(phantom_dir), str(tmp_path), DataConfig(protocol="paper", **SMALL))
    t = TensorSet.load(prepared.tensors_url)
    assert t.split.leaky and prepared.meta["leaky"]
    assert t.augmented[t.split.test].any()
    assert prepared.meta["leakage"] > 0


def test_augmentation_same_for_a_seed(tmp_path, phantom_dir):
    a = TensorSet.load(
        prepare(str(phantom_dir), str(tmp_path / "a"), DataConfig(**SMALL)).tensors_url
    )
    b = TensorSet.load(
        prepare(str(phantom_dir), str(tmp_path / "b"), DataConfig(**SMALL)).tensors_url
    )
    c = TensorSet.load(
        prepare(str(phantom_dir), str(tmp_path / "c"), DataConfig(seed=3, **SMALL)).tensors_url
    )
    assert np.array_equal(a.images, b.images)
    assert a.images.shape != c.images.shape or not np.array_equal(a.images, c.images)


def test_incomplete_cache_is_not_trusted(tmp_path, phantom_dir):
    prepared = prepare(str(phantom_dir), str(tmp_path), DataConfig(**SMALL))
    loc = resolve(prepared.tensors_url)
    loc.fs.rm(loc.join("_COMPLETE.json").path)
    with pytest.raises(FileNotFoundError, match="no complete tensor cache"):
        TensorSet.load(prepared.tensors_url)
    assert not prepare(str(phantom_dir), str(tmp_path), DataConfig(**SMALL)).reused


def test_prepare_to_real_s3_server(s3_bucket, phantom_dir, tmp_path):
    out = f"{s3_bucket}/runs"
    prepared = prepare(str(phantom_dir), out, DataConfig(**SMALL))
    assert prepared.tensors_url.startswith(f"{s3_bucket}/runs/cache/")
    assert prepare(str(phantom_dir), out, DataConfig(**SMALL)).reused
    remote = TensorSet.load(prepared.tensors_url)
    local = TensorSet.load(
        prepare(str(phantom_dir), str(tmp_path), DataConfig(**SMALL)).tensors_url
    )
    assert np.array_equal(remote.images, local.images)
    assert remote.split.to_json() == local.split.to_json()


def test_missing_bucket_is_a_clear_error(s3_server, phantom_dir):
    with pytest.raises(StorageError, match="bucket does not exist"):
        prepare(str(phantom_dir), "s3://braintl-missing-bucket/out", DataConfig(**SMALL))
