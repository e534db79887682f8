"""Training configuration: one validated pydantic model, so the CLI, the Prefect form and the
Ray Tune search space all check the same rules and name the same defaults (the seed's)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from braintl.errors import UserError
from braintl.models import HEADS, STRATEGIES, list_models, list_strategies
from braintl.models.registry import get_entry

# Fields that may differ when a run resumes from a checkpoint: they do not change what was
# learned so far (a longer budget, another machine, compiled kernels).
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "device",
        "num_threads",
        "compile",
        "feature_cache",
        "feature_memory_budget_mb",
        "checkpoint_interval_s",
    }
)

# Strategies with a frozen start worth warming a new head on before blocks open.
WARMUP_STRATEGIES = ("finetune", "progressive")


class TrainConfig(BaseModel):
    """How one model is trained. Optimisation defaults are the seed's (Adam, lr 1e-3, 18 epochs,
    batch 18); the model defaults (scratch_cnn, full, no weights) need no download."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: str = Field("scratch_cnn", description="registry name, see braintl.models")
    strategy: str = Field("full", description="frozen, finetune, progressive or full")
    weights: str = Field("none", description="imagenet, none, or a URL of a state dict")
    head: str = "paper"
    head_units: int | None = Field(None, ge=1, description="None: the head's default")
    dropout: float | None = Field(None, ge=0, lt=1, description="None: the head's default")
    epochs: int = Field(18, ge=1)
    # BatchNorm in the heads needs at least two images to train on.
    batch_size: int = Field(18, ge=2)
    lr: float = Field(1e-3, gt=0)
    backbone_lr_factor: float = Field(
        0.1, gt=0, le=1, description="backbone lr = lr × this (finetune, progressive)"
    )
    weight_decay: float = Field(0.0, ge=0)
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after this many epochs without a better validation AUC"
    )
    progressive_epochs_per_stage: int = Field(3, ge=1)
    warmup_epochs: int = Field(
        0,
        ge=0,
        description="first epochs train the head alone (backbone frozen), then the strategy "
        "opens its blocks with a fresh optimizer; counted in epochs",
    )
    seed: int = Field(0, ge=0)
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; None: torch's")
    feature_cache: bool = Field(
        True, description="compute frozen blocks once per image (braintl.training.features)"
    )
    feature_memory_budget_mb: float = Field(
        2048, gt=0, description="larger feature caches stream from disk or are recomputed"
    )
    compile: bool = Field(
        False, description="torch.compile the training forward (cost: first-epoch overhead)"
    )
    checkpoint_interval_s: float = Field(
        10.0,
        ge=0,
        description="with a checkpoint URL, write one after an epoch when this many seconds "
        "passed since the last (0: every epoch); the first and last epochs are always written",
    )

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, value: str) -> str:
        return _choice("backbone", value, list_models())

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        return _choice("strategy", value, STRATEGIES)

    @field_validator("head")
    @classmethod
    def _head(cls, value: str) -> str:
        return _choice("head", value, HEADS)

    @model_validator(mode="after")
    def _fits_backbone(self) -> TrainConfig:
        """Catch combinations the backbone cannot take before any model is built."""
        allowed = list_strategies(self.backbone)
        if self.strategy not in allowed:
            raise ValueError(
                f"strategy {self.strategy!r} does not apply to {self.backbone}: "
                f"choose one of {', '.join(allowed)}"
            )
        if self.warmup_epochs and self.strategy not in WARMUP_STRATEGIES:
            raise ValueError(
                f"warmup_epochs applies to strategies that open backbone blocks "
                f"({', '.join(WARMUP_STRATEGIES)}), not {self.strategy!r}"
            )
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs {self.warmup_epochs} leaves no epoch of {self.epochs} to the "
                f"{self.strategy} stage: raise epochs or lower warmup_epochs"
            )
        if self.weights == "imagenet" and get_entry(self.backbone).spec.pretrained is None:
            raise ValueError(
                f"{self.backbone} has no ImageNet weights: use weights 'none' or a state-dict URL"
            )
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"unknown device {value!r}: choose auto, cpu, cuda or cuda:N")
        return value

    @classmethod
    def from_user(cls, **values: Any) -> TrainConfig:
        """Validate user input, raising a one-line :class:`UserError` that names every bad field."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(_describe(err) for err in exc.errors())
            raise UserError(f"invalid training configuration: {problems}") from None


def _choice(what: str, value: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")
    return value


def _describe(error: dict) -> str:
    """One pydantic error as ``field: message``, without pydantic's "Value error, " prefix."""
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    field = ".".join(map(str, error["loc"]))
    return f"{field}: {message}" if field else message
