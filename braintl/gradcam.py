"""Grad-CAM: where in a scan the model looked when it scored the tumor logit.

Selvaraju et al.'s recipe on the backbone's last feature map (``BrainTLModel.features``): the
tumor logit's gradient, averaged over space, weights each channel; the weighted sum, rectified,
is upsampled to the image. The feature map is detached and re-entered into the head, so the
heatmap is the same whether or not a strategy froze the backbone. Qualitative only: a heatmap
shows what the model used, not whether that is anatomy.

A fold ensemble's heatmap (:func:`ensemble_grad_cam`) is the mean of its members' heatmaps, each
scaled by its own maximum first: every member weighs the same, whatever the size of its
gradients, and a region reaches 1 only where every member's map peaks, so the overlay also shows
how far the members agree.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image

OVERLAY_ALPHA = 0.45


def grad_cam(model, images: torch.Tensor) -> np.ndarray:
    """N×H×W heatmaps in [0, 1] for the tumor logit of uint8 ``images`` (N×3×H×W).

    Each heatmap is scaled by its own maximum; an image with no positive evidence gets zeros.
    The model is evaluated in eval mode and left in the mode it came in.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"grad_cam expects images N×3×H×W, got shape {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.enable_grad():
            features = model.features(images.to(device)).detach().float().requires_grad_(True)
            logits = model.forward_head(features)
            (grads,) = torch.autograd.grad(logits.sum(), features)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * features.detach()).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)
        cam = cam[:, 0]
        peak = cam.amax(dim=(1, 2), keepdim=True)
        cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
        return cam.clamp(0, 1).cpu().numpy()
    finally:
        model.train(was_training)


def ensemble_grad_cam(models, images: torch.Tensor) -> np.ndarray:
    """N×H×W heatmaps in [0, 1] of a fold ensemble: the mean of its members' :func:`grad_cam`."""
    return np.mean([grad_cam(model, images) for model in models], axis=0)


def overlay_png(image: np.ndarray | torch.Tensor, heatmap: np.ndarray) -> bytes:
    """A PNG of ``image`` (3×H×W uint8) with ``heatmap`` (H×W in [0, 1]) blended on in the
    jet colour map; a heatmap of another size is resized to the image."""
    pixels = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[0] != 3:
        raise ValueError(f"overlay_png expects an image 3×H×W, got shape {pixels.shape}")
    rgb = pixels.transpose(1, 2, 0).astype(np.float32) / 255.0
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if heat.ndim != 2:
        raise ValueError(f"overlay_png expects a heatmap H×W, got shape {heat.shape}")
    if heat.shape != rgb.shape[:2]:
        resized = Image.fromarray(heat).resize(rgb.shape[1::-1], Image.Resampling.BILINEAR)
        heat = np.asarray(resized, dtype=np.float32)
    colour = colormaps["jet"](heat)[..., :3]
    blend = (1 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * colour
    buffer = io.BytesIO()
    Image.fromarray((blend * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
