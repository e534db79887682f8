"""How long each stage of a run may take, derived from its size, so a hung stage fails the run.

The nightly deployment runs one flow at a time (concurrency limit 1, ENQUEUE): a run that never
ends blocks every later night. Training stages get a generous allowance per image-epoch (scaled by
image area) times the images, epochs and runs (trials or folds) in turn, never less than a floor;
``scale`` stretches every derived timeout at once, and explicit seconds replace one stage's.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from braintl.data.prepare import DataConfig
from braintl.errors import UserError

# Seconds per image and epoch at 224 px, training and scoring included: about five times what the
# quick profile takes on 2 CPU cores (README: ~6 min for its ~22k image-epochs at 64 px, two at
# once), scaled to 224 px by area. GPUs run far faster; a hang still ends.
SECONDS_PER_IMAGE_EPOCH_224 = 2.0
# Preparing decodes, hashes, groups and augments each listed file once.
PREPARE_SECONDS_PER_FILE = 0.05
# No stage is given less: starting Ray workers and loading tensors take a minute on a busy node.
FLOOR_S = 900.0
# The flow's own limit, an outer bound above its stages; the nightly deployment's is lower so
# that two attempts (its one retry) end before the next night is due.
RUN_TIMEOUT_S = 48 * 3600.0
NIGHTLY_TIMEOUT_S = 11 * 3600.0

STAGES = {  # stage → its explicit setting under RetrainParams.timeouts
    "prepare": "prepare_s",
    "sweep": "sweep_s",
    "cross-validation": "cross_validation_s",
    "publish": "publish_s",
    "external": "external_s",
}


class StageTimeout(UserError):
    """A stage ran past its timeout: the message names the stage and the setting to raise."""


class Timeouts(BaseModel):
    """Per-stage timeouts of a run (``RetrainParams.timeouts``); None derives one from the size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = Field(1.0, gt=0, description="multiplies every derived stage timeout")
    prepare_s: float | None = Field(None, gt=0, description="None: from max_images")
    sweep_s: float | None = Field(None, gt=0, description="None: images × epochs × trials")
    cross_validation_s: float | None = Field(
        None, gt=0, description="each fold, queueing included; None: images × epochs × folds"
    )
    publish_s: float | None = Field(
        None, gt=0, description="each of results, report and model; None: the floor"
    )
    external_s: float | None = Field(
        None, gt=0, description="each external-validation stage; None: from max_images"
    )

    def prepare(self, config: DataConfig) -> float:
        """Preparing the most files ``config`` accepts (``max_images``), augmented if enabled."""
        ratio = config.augment.target_ratio if config.augment.enabled else 1.0
        return self._seconds("prepare", config.max_images * ratio * PREPARE_SECONDS_PER_FILE)

    def training(
        self, stage: str, images: int, image_size: int, epochs: int, runs: int, at_once: int
    ) -> float:
        """``runs`` trainings of ``epochs`` over ``images`` at ``image_size`` px, ``at_once``
        running side by side (the sweep's ``max_concurrent_trials``)."""
        waves = math.ceil(runs / max(1, at_once))
        per_image_epoch = SECONDS_PER_IMAGE_EPOCH_224 * (image_size / 224) ** 2
        return self._seconds(stage, waves * epochs * images * per_image_epoch)

    def external(self, config: DataConfig, sets: int) -> float:
        """Each external stage reads the development data (screening) or its test part
        (scoring) and ``sets`` external sets, each at most ``max_images``, once."""
        return self._seconds("external", (1 + sets) * config.max_images * PREPARE_SECONDS_PER_FILE)

    def publish(self) -> float:
        return self._seconds("publish", 0.0)

    def _seconds(self, stage: str, derived: float) -> float:
        explicit = getattr(self, STAGES[stage])
        return explicit if explicit is not None else self.scale * max(FLOOR_S, derived)


def expired(stage: str, seconds: float, what: str) -> StageTimeout:
    """The error of ``what`` (a task of ``stage``) still running after ``seconds``."""
    setting = f"timeouts.{STAGES[stage]}"
    return StageTimeout(
        f"{stage} timed out: {what} still running after {seconds:g} s. If it was working, not "
        f"hung, raise {setting} (seconds) or timeouts.scale (derived timeouts × scale)."
    )
