"""The model every part of braintl trains, caches and serves."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from braintl.models.heads import Head
from braintl.models.spec import BackboneSpec


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or as it is when wider (float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class BrainTLModel(nn.Module):
    """Backbone + head behind one contract: pixels in, one tumor logit per image out.

    ``forward(x)`` takes a uint8 or float batch N×3×H×W with values in [0, 255] and returns
    float32 logits of shape [N]. Normalisation happens inside (mean/std are non-persistent
    buffers), so callers ship raw uint8 tensors to the device and never need to know which
    backbone wants which statistics. ``features`` and ``forward_head`` split the model where a
    frozen-backbone feature cache cuts it.

    BatchNorm modules frozen by a strategy (see :func:`braintl.models.apply_strategy`) stay in
    eval mode across ``train()``, so their running statistics cannot drift.
    """

    def __init__(self, spec: BackboneSpec, backbone: nn.Module, head: Head, config: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.head = head
        self.config = config  # create_model's arguments bar weights: enough to rebuild the model
        self.plan = None  # the StrategyPlan last applied
        self.frozen_bn: tuple[str, ...] = ()
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1) * 255  # the default dtype, float32
        std = torch.tensor(spec.std).view(1, 3, 1, 1) * 255
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        # The backbone as its blocks' modules in forward order (a plain list: no second
        # registration), so it can be cut at any block boundary.
        self._block_modules = [
            [backbone.get_submodule(name) for name in block.modules] for block in spec.blocks
        ]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images N×3×H×W, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            x = x.to(self.pixel_mean.dtype)
        return (x - self.pixel_mean) / self.pixel_std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone feature map N×C×h×w of raw [0, 255] images."""
        return self.backbone(self.normalize(x))

    def prefix(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """The activations entering block ``stop`` (0-based) of raw [0, 255] images: what a
        frozen-prefix cache stores. ``prefix(x, len(spec.blocks))`` equals ``features(x)``."""
        return self._run_blocks(self.normalize(x), 0, stop)

    def forward_from(self, activations: torch.Tensor, start: int) -> torch.Tensor:
        """Logits [N] from the activations entering block ``start``: the trainable rest of the
        model when blocks ``0..start-1`` are frozen and their output is cached."""
        return self.forward_head(self._run_blocks(activations, start, len(self.spec.blocks)))

    def _run_blocks(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for modules in self._block_modules[start:stop]:
            for module in modules:
                h = module(h)
        return h

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [N] from a feature map, e.g. one read back from a feature cache. At least
        float32, also under bf16 autocast, so losses and probabilities keep their precision
        (float64 for a float64 model, which tests use to compare paths free of rounding)."""
        return at_least_float32(self.head(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.features(x))

    def train(self, mode: bool = True) -> BrainTLModel:
        super().train(mode)
        for name in self.frozen_bn:
            self.get_submodule(name).eval()
        return self
