"""What a run's figures are: the warnings, and when the seed's figure stands beside ours."""

from __future__ import annotations

import pytest

from braintl.caveats import (
    LEAKY_REFERENCE,
    RANDOM_INIT_WARNING,
    SMOKE_TEST_WARNING,
    SYNTHETIC_WARNING,
    run_warnings,
    seed_comparison,
)
from braintl.data.phantoms import is_phantom_set
from braintl.replica import departures, seed_config


def test_random_weights_on_pretrainable_backbones_open_with_the_warning():
    (warning,) = run_warnings([("mobilenet_v2", "none"), ("scratch_cnn", "none")], False)
    assert warning.startswith(RANDOM_INIT_WARNING) and "(mobilenet_v2 started" in warning
    assert run_warnings([("vgg16", "imagenet"), ("scratch_cnn", "none")], False) == []
    assert run_warnings([("vgg16", "s3://b/model/backbone.safetensors")], False) == []
    assert run_warnings([("scratch_cnn", "none")], True) == [f"{SYNTHETIC_WARNING}."]


def test_a_smoke_test_run_says_so_first():
    smoke, synthetic = run_warnings([("scratch_cnn", "none")], True, smoke_test=True)
    assert smoke == f"{SMOKE_TEST_WARNING}." and "profile quick" in smoke
    assert "profile cpu" in smoke and synthetic.startswith(SYNTHETIC_WARNING)


@pytest.mark.parametrize(
    ("backbone", "weights", "protocol", "synthetic", "departs", "shown", "comparable"),
    [
        ("xception", "imagenet", "paper", False, [], True, True),  # the replica
        ("scratch_cnn", "none", "paper", False, [], True, True),  # the seed's 2D-CNN
        ("xception", "imagenet", "paper", False, ["epochs 3 (seed 18)"], True, False),
        ("xception", "imagenet", "groups", False, [], True, False),
        ("xception", "none", "paper", False, [], False, False),  # a stand-in
        ("xception", "s3://b/state.pt", "paper", False, [], False, False),
        ("xception", "imagenet", "paper", True, [], False, False),  # phantoms
    ],
)
def test_seed_figure_only_beside_the_seeds_weights_on_real_scans(
    backbone, weights, protocol, synthetic, departs, shown, comparable
):
    comparison = seed_comparison(backbone, weights, protocol, synthetic, departs)
    assert (comparison["shown"], comparison["comparable"]) == (shown, comparable)
    assert comparison["label"].startswith("seed" if shown else "not shown")
    if protocol == "groups":
        assert comparison["label"] == LEAKY_REFERENCE
    if departs:
        assert "epochs 3 (seed 18)" in comparison["label"]


def test_departures_from_the_seeds_settings():
    replica = seed_config("vgg16", "finetune", {"weights": "imagenet"}).model_dump()
    assert departures(replica, 224) == []
    quick = {**replica, "epochs": 3, "batch_size": 16, "backbone_lr_factor": 0.1}
    assert departures(quick, 64) == [
        "batch_size 16 (seed 18)",
        "epochs 3 (seed 116)",
        "backbone_lr_factor 0.1 (seed 1.0)",
        "image size 64 (seed 224)",
    ]
    old = {k: v for k, v in replica.items() if k not in ("warmup_epochs", "head")}
    frozen = {**old, "strategy": "frozen", "epochs": 18, "backbone_lr_factor": 0.1}
    assert departures(frozen, 224) == []  # fields a record predates take their defaults


def test_phantom_sets_are_known_by_their_file_names():
    assert is_phantom_set(["yes/phantom_yes_0000.png", "no\\phantom_no_12345.jpg"])
    assert not is_phantom_set(["yes/phantom_yes_0000.png", "no/scan 3.jpg"])
    assert not is_phantom_set([])
