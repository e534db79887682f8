"""Warm start: ``weights="previous"`` (or a published model URL) starts the published model's
backbone from its weights; the other backbones start as the profile says."""

from __future__ import annotations

import pytest
import torch
from small_run import small_run

from braintl.data.tensors import TensorSet
from braintl.errors import UserError
from braintl.models.weights import read_state_dict
from braintl.publish import load_model, warm_start, weights_url
from braintl.storage import resolve
from braintl.training import TrainConfig
from braintl.training.loop import _Run
from flows.params import RetrainParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    return small_run(tmp_path_factory)


def test_previous_and_a_model_url_resolve_to_the_published_backbone(retrained):
    """Of the ensemble's members, the one with the best validation AUC (one backbone trains)."""
    model_url = retrained.record["model"]
    members = load_model(model_url).info["members"]
    best = max(members, key=lambda m: m["val_auc"])
    weights = weights_url(model_url, best)
    expected = {"backbone": "scratch_cnn", "weights": weights, "model": model_url}
    assert warm_start("previous", str(retrained.out)) == expected
    assert warm_start(model_url, "elsewhere") == expected
    assert weights.endswith(f"model/fold{best['fold']}/backbone.safetensors")
    assert warm_start("none", str(retrained.out)) is None
    assert warm_start("imagenet", str(retrained.out)) is None


def test_the_model_starts_from_the_previous_backbone_before_training(retrained):
    """The training loop's model, as built before its first step, carries the published
    backbone parameters and buffers exactly; its head is new (here of another width)."""
    warm = warm_start("previous", str(retrained.out))
    published = load_model(warm["model"])
    tensors = TensorSet.load(published.info["data"]["tensors_url"])
    train_idx, val_idx = tensors.fold(1)
    config = TrainConfig(backbone="scratch_cnn", weights=warm["weights"], head_units=16, seed=7)
    model = _Run(tensors, train_idx, val_idx, config, torch.device("cpu")).model
    previous = read_state_dict(warm["weights"])
    started = model.backbone.state_dict()
    assert previous.keys() == started.keys() and previous
    assert all(torch.equal(previous[k], started[k]) for k in previous)
    assert model.head.units == 16 != published.members[0].head.units


def test_sweep_groups_start_only_the_published_backbone_warm(retrained):
    warm = warm_start("previous", str(retrained.out))
    params = RetrainParams(backbones=["scratch_cnn", "mobilenet_v2"], weights="previous")
    assert params.sweep_groups(warm) == {
        warm["weights"]: [("scratch_cnn", "full")],
        "none": [("mobilenet_v2", "frozen"), ("mobilenet_v2", "finetune")],
    }
    paper = RetrainParams(
        profile="paper",
        backbones=["scratch_cnn", "vgg16"],
        weights="previous",
        gpus_per_fold=0,
        sweep={"gpus_per_trial": 0},
    )
    assert paper.sweep_groups(warm)["imagenet"] == [("vgg16", "frozen"), ("vgg16", "finetune")]
    other = RetrainParams(backbones=["mobilenet_v2"], weights="previous")
    with pytest.raises(UserError, match="is a scratch_cnn model .* add scratch_cnn to backbones"):
        other.sweep_groups(warm)


def test_previous_without_a_published_model_is_a_clear_error(retrained, tmp_path):
    with pytest.raises(UserError, match="no previous published model.*does not exist"):
        warm_start("previous", str(tmp_path))
    latest = resolve(retrained.out).join("latest.json").read_json()
    resolve(str(tmp_path)).join("latest.json").write_json(
        {k: v for k, v in latest.items() if k != "model"}
    )
    with pytest.raises(UserError, match="names no model.*Run once with weights 'none'"):
        warm_start("previous", str(tmp_path))
