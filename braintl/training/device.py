"""Where training runs: CUDA with bf16 autocast and channels_last when present, fp32 on CPU."""

from __future__ import annotations

import contextlib

import torch

from braintl.errors import UserError


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


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a uint8 batch; on CUDA through pinned memory so the copy overlaps compute."""
    if device.type != "cuda":
        return images
    return images.pin_memory().to(device, non_blocking=True, memory_format=torch.channels_last)
