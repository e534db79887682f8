"""Stage timeouts from a run's size: the arithmetic, the overrides and the message."""

from __future__ import annotations

import pytest

from braintl.data.prepare import DataConfig
from braintl.errors import UserError
from braintl.timeouts import (
    FLOOR_S,
    PREPARE_SECONDS_PER_FILE,
    SECONDS_PER_IMAGE_EPOCH_224,
    Timeouts,
    expired,
)
from flows.params import RetrainParams


def test_training_time_grows_with_images_epochs_and_waves_of_runs():
    timeouts = Timeouts()
    # The paper's set: 2062 images at 224 px, 18 epochs; 10 trials, 2 at once: 5 waves.
    sweep = timeouts.training("sweep", 2062, 224, 18, runs=10, at_once=2)
    assert sweep == 5 * 18 * 2062 * SECONDS_PER_IMAGE_EPOCH_224
    assert timeouts.training("sweep", 2062, 224, 18, runs=9, at_once=2) == sweep  # still 5 waves
    assert timeouts.training("sweep", 2062, 224, 18, runs=10, at_once=10) == sweep / 5
    # A quarter of the pixels, a quarter of the time.
    assert timeouts.training("sweep", 2062, 112, 18, runs=10, at_once=2) == sweep / 4


def test_small_stages_get_the_floor_and_scale_stretches_every_derived_timeout():
    tiny = Timeouts().training("cross-validation", 48, 32, 2, runs=2, at_once=2)
    assert tiny == FLOOR_S
    assert Timeouts(scale=3).training("cross-validation", 48, 32, 2, 2, 2) == 3 * FLOOR_S
    assert Timeouts(scale=0.5).publish() == FLOOR_S / 2


def test_explicit_seconds_replace_one_stage_only():
    timeouts = Timeouts(cross_validation_s=30, scale=2)
    assert timeouts.training("cross-validation", 2062, 224, 18, 50, 2) == 30
    assert timeouts.training("sweep", 48, 32, 2, 2, 2) == 2 * FLOOR_S


def test_prepare_is_sized_by_the_most_files_accepted_and_augmentation():
    plain = DataConfig(max_images=100_000, augment={"enabled": False})
    assert Timeouts().prepare(plain) == 100_000 * PREPARE_SECONDS_PER_FILE
    augmented = DataConfig(max_images=100_000, augment={"enabled": True, "target_ratio": 4})
    assert Timeouts().prepare(augmented) == 4 * Timeouts().prepare(plain)
    assert Timeouts().prepare(DataConfig(max_images=10)) == FLOOR_S


def test_the_message_names_stage_what_and_the_setting_to_raise():
    error = expired("cross-validation", 30, "fold 1 of scratch_cnn/full")
    assert isinstance(error, UserError)  # not retried; the CLI prints it as one line
    text = str(error)
    assert text.startswith("cross-validation timed out: fold 1 of scratch_cnn/full")
    assert "after 30 s" in text and "timeouts.cross_validation_s" in text
    assert "timeouts.scale" in text


def test_timeouts_are_a_form_field_outside_the_run_key():
    base = RetrainParams()
    slower = RetrainParams(timeouts={"scale": 4, "sweep_s": 60})
    assert slower.timeouts.sweep_s == 60
    assert slower.run_key("data") == base.run_key("data")  # how long, not what is computed
    with pytest.raises(ValueError, match="greater than 0"):
        RetrainParams(timeouts={"scale": 0})
