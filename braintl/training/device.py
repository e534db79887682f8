"""Where training runs: CUDA with bf16 autocast and channels_last when present, fp32 on CPU.

Images stay uint8 until they reach the training device (the model normalises them there), so a
batch costs one byte per pixel to move. On CUDA the whole training set is copied to the GPU once
when it fits a share of the free memory; otherwise each batch goes through pinned host memory
with a non-blocking copy that overlaps compute.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable

import numpy as np
import torch

from braintl.errors import UserError

# Share of the GPU's free memory the uint8 training images may take when kept there whole: the
# rest is for activations, and for the other trials sharing the card (fractional GPUs).
RESIDENT_SHARE = 0.25
# torch.compile's backend; inductor generates fused kernels (C++ on CPU, Triton on CUDA).
COMPILE_BACKEND = "inductor"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when a GPU is visible; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but no CUDA GPU is visible: use --device cpu")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); a no-op elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fused_adam(device: torch.device) -> bool:
    """Whether Adam should update every parameter in one fused kernel: on CPU and CUDA it is
    2-3× faster than the per-tensor loop (which dominates a small head's step) and computes the
    same update up to rounding."""
    return device.type in ("cpu", "cuda")


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def compiled(model: torch.nn.Module, enabled: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's forward, through ``torch.compile`` when enabled. The module itself stays
    uncompiled, so its state dict and evaluation are the same either way; compilation happens
    lazily on the first batch, which is why its cost shows up as first-epoch overhead."""
    return torch.compile(model, backend=COMPILE_BACKEND) if enabled else model


def first_epoch_overhead(history: list[dict]) -> float | None:
    """Seconds the first epoch took beyond a typical later one (compilation, warm-up); None
    with fewer than two epochs."""
    if len(history) < 2:
        return None
    return max(0.0, history[0]["seconds"] - statistics.median(r["seconds"] for r in history[1:]))


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a uint8 batch; on CUDA through pinned memory so the copy overlaps compute."""
    if device.type != "cuda":
        return images
    return images.pin_memory().to(device, non_blocking=True, memory_format=torch.channels_last)


def fits_on_device(nbytes: int, device: torch.device, share: float = RESIDENT_SHARE) -> bool:
    """Whether ``nbytes`` may live on ``device`` for a whole run (always False off CUDA)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= share * free


class BatchSource:
    """uint8 training images, handed out batch by batch on the training device.

    On CUDA the images are copied to the GPU once when they fit (:func:`fits_on_device`), so a
    batch is a gather in GPU memory; otherwise each batch is gathered on the host and copied
    through pinned memory. On the CPU a batch is a gather from the (possibly memory-mapped)
    array, never a copy of the whole set.
    """

    def __init__(self, images: np.ndarray, device: torch.device, resident: bool | None = None):
        self.device = device
        host = torch.from_numpy(images)
        self.resident = fits_on_device(images.nbytes, device) if resident is None else resident
        if self.resident:
            self.images = host.to(device).contiguous(memory_format=torch.channels_last)
        else:
            self.images = host

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """The images at ``index`` (int64, on the CPU), on the training device."""
        if self.resident:
            batch = self.images[index.to(self.device, non_blocking=True)]
            return batch.contiguous(memory_format=torch.channels_last)
        return to_device(self.images[index], self.device)
