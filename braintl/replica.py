"""The seed's own training settings per model: what ``tuning="seed"`` (the ``paper`` profile's
default) trains instead of sweeping, so a ``paper``-protocol run replicates the seed.

What the seed's text (``seed/000_521be185051353fb.txt``) fixes, and what we take:

- Every model: binary cross-entropy, learning rate 1e-3, 18 epochs, batch size 18, ImageNet
  weights (the profile's), head Flatten → Dense(relu) → Dropout(0.1) → BatchNorm → Dense(2,
  softmax), our ``paper`` head. The text names no Dense width (we keep the head's 256) and loses
  the optimizer's name ("It was used as an optimizer with the parameter learning rate = 0.001");
  we train with Adam, as DESIGN.md reads it.
- Fine-tuning retrains "the last convolution block and the fully connected layers": strategy
  ``finetune``, with *one* learning rate for every trained layer (a Keras optimizer has one), so
  ``backbone_lr_factor`` is 1, not our sweeps' 0.1.
- The 2D-CNN trains from scratch with the same settings (strategy ``full``, no weights).
- VGG-16 fine-tuned: head ``paper_vgg_ft`` (GAP → BN → Dropout(0.23) → Dense(510, relu) → BN →
  Dropout(0.3) → Dense(1, sigmoid)) and two stages, 18 + 98 = 116 epochs. The seed builds it
  from VGG-16 "with the weights obtained from its training in the previous stage (basic
  transfer learning strategy)", which trained 18 epochs, and gives "number epochs = 98" for the
  model so built: stage 2 alone is 98. Stage 1's head (Flatten → Dense(2)) cannot carry into
  stage 2's, and with VGG-16's convolutions frozen the head is all that stage 1 trains; so
  carrying stage 1's weights over means warming the stage-2 head on the frozen backbone for the
  basic strategy's 18 epochs (``warmup_epochs``), then opening the last block for 98.
  The seed's extra Conv2D before VGG-16, "input form = (62, 62, 2)", contradicts its own
  224×224×3 images and VGG-16's three input channels; we leave it out.

``epochs`` and ``batch_size`` come from the run (the profile sets the seed's 18 and 18), so an
explicit ``--epochs`` still counts: it sets the basic budget and VGG-16's first stage; the second
stage stays the seed's 98.
"""

from __future__ import annotations

from braintl.training import TrainConfig
from braintl.training.config import WARMUP_STRATEGIES

SEED_IMAGE_SIZE = 224
SEED_LR = 1e-3
SEED_EPOCHS = 18
SEED_BATCH_SIZE = 18
VGG_FT_SECOND_STAGE_EPOCHS = 98

# Every field the seed fixes for all models; the rest comes from the run (weights, seed, ...).
SEED_SETTINGS = {
    "lr": SEED_LR,
    "epochs": SEED_EPOCHS,
    "batch_size": SEED_BATCH_SIZE,
    "head": "paper",
    "head_units": None,
    "dropout": None,
    "backbone_lr_factor": 1.0,
    "weight_decay": 0.0,
    "early_stopping_patience": None,
    "warmup_epochs": 0,
}
# Fields a trained model's configuration is held to when it is compared with the seed's figure.
COMPARED = ("lr", "batch_size", "epochs", "head", "head_units", "dropout", "warmup_epochs")


def seed_config(backbone: str, strategy: str, base: dict) -> TrainConfig:
    """The seed's training configuration of (``backbone``, ``strategy``); ``base`` (the run's
    weights, epochs, batch size, seed, threads) wins over the common settings."""
    values = {**SEED_SETTINGS, **base, "backbone": backbone, "strategy": strategy}
    if (backbone, strategy) == ("vgg16", "finetune"):
        first = values["epochs"]
        values |= {
            "head": "paper_vgg_ft",
            "warmup_epochs": first,
            "epochs": first + VGG_FT_SECOND_STAGE_EPOCHS,
        }
    return TrainConfig(**values)


def seed_configs(pairs: list[tuple[str, str]], base: dict) -> dict[str, dict]:
    """``backbone/strategy`` → the seed's configuration, in the shape a sweep's ``best`` has."""
    return {f"{b}/{s}": seed_config(b, s, base).model_dump() for b, s in pairs}


def departures(config: dict, image_size: int) -> list[str]:
    """How a trained model's configuration departs from the seed's, in words such as
    ``"epochs 3 (seed 18)"``; empty for a replica. Fields a config predates take their default."""
    seed = seed_config(config["backbone"], config["strategy"], {"weights": config["weights"]})
    defaults = {k: field.default for k, field in TrainConfig.model_fields.items()}
    trains_backbone = config["strategy"] in WARMUP_STRATEGIES
    fields = COMPARED + (("backbone_lr_factor",) if trains_backbone else ())
    out = [
        f"{k} {config.get(k, defaults[k])} (seed {getattr(seed, k)})"
        for k in fields
        if config.get(k, defaults[k]) != getattr(seed, k)
    ]
    if image_size != SEED_IMAGE_SIZE:
        out.append(f"image size {image_size} (seed {SEED_IMAGE_SIZE})")
    return out
