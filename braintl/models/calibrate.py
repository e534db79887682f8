"""Stand-in pretrained weights for machines that cannot download ImageNet ones.

Random weights with untouched BatchNorm statistics (mean 0, variance 1) make activations vanish
or explode through a deep frozen stack, so frozen features carry almost nothing and gradients
fall below Adam's epsilon. Pretrained weights come with statistics measured on real images;
measuring them on the training images gives random weights the same well-scaled activations.
Tests and benchmarks use this to exercise frozen and fine-tuned training without a download.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from braintl.models.model import BrainTLModel

CALIBRATION_BATCH = 64


@torch.no_grad()
def calibrate_batchnorm(model: BrainTLModel, images: np.ndarray) -> BrainTLModel:
    """Set every backbone BatchNorm's running statistics to their averages over ``images``
    (uint8 N×3×H×W), leaving the weights as they are; returns the model in eval mode."""
    layers = [m for m in model.backbone.modules() if isinstance(m, _BatchNorm)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over every batch seen
    model.train()
    for start in range(0, len(images), CALIBRATION_BATCH):
        model.features(torch.from_numpy(images[start : start + CALIBRATION_BATCH]))
    for layer in layers:
        layer.momentum = 0.1  # torch's default again
    return model.eval()
