"""A model's tumor logits and probabilities for uint8 images, in batches: what evaluation, the
training loop's validation and the frozen-prefix cache all call (below them, so none of them
imports another to get it)."""

from __future__ import annotations

import numpy as np
import torch

from braintl.training.device import autocast, to_device

EVAL_BATCH_SIZE = 64


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Tumor logits (float32, or float64 for a float64 model; on the CPU) for uint8 N×3×H×W
    images; puts the model in eval mode."""
    device = device or _model_device(model)
    images = torch.as_tensor(images)
    model.eval()
    out = []
    with autocast(device):
        for start in range(0, len(images), batch_size):
            out.append(model(to_device(images[start : start + batch_size], device)))
    if not out:
        return torch.empty(0)
    return torch.cat(out).cpu()


def predict_proba(
    model: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | None = None,
) -> np.ndarray:
    """Tumor probabilities for uint8 N×3×H×W images (the model normalises them itself)."""
    return torch.sigmoid(predict_logits(model, images, batch_size, device)).numpy()
