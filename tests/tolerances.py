"""How far apart two float32 evaluations of one network may be, derived from the arithmetic.

Two evaluations that differ only in summation order (another batch size, the cached prefix
against the whole model, oneDNN's AVX2 against its AVX-512 kernels) round differently. A sum of
K products, in any order, is within about sqrt(K)·u of the exact sum relative to the sum of the
terms' magnitudes (u = 2^-24 in float32, 2^-53 in float64; the probabilistic bound of Higham
and Mary, 2019).
Through L such layers, with BatchNorm keeping activations at unit scale, these relative errors
add at most linearly, and the last layer turns them into logit errors of the size of its terms
S = Σ|w·x|. Two evaluations, each that far from the exact value, differ in the logit by at most

    2 · L · sqrt(K_max) · u · S

and in the probability by a quarter of that (the sigmoid's slope is at most 1/4). A wrong cut,
a wrong row or a wrong head moves logits by orders of magnitude more, so the test still bites.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _fan_in(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    return layer.in_channels // layer.groups * math.prod(layer.kernel_size)


@torch.inference_mode()
def logit_tolerance(model: nn.Module, images: torch.Tensor) -> float:
    """The bound above for ``model`` (eval mode) on uint8 ``images``, as an absolute logit
    difference; S is the largest last-layer term sum over the images."""
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    last = [m for m in layers if isinstance(m, nn.Linear)][-1]
    sizes: list[float] = []

    def measure(layer: nn.Linear, inputs: tuple[torch.Tensor], _output) -> None:
        terms = inputs[0].abs() @ layer.weight.abs().T
        if layer.bias is not None:
            terms = terms + layer.bias.abs()
        sizes.append(terms.sum(dim=-1).max().item())  # both outputs of a 2-class head count

    handle = last.register_forward_hook(measure)
    try:
        model.eval()(torch.as_tensor(images))
    finally:
        handle.remove()
    depth, widest = len(layers), max(_fan_in(m) for m in layers)
    unit_roundoff = torch.finfo(last.weight.dtype).eps / 2
    return 2 * depth * math.sqrt(widest) * unit_roundoff * max(sizes)


def probability_tolerance(model: nn.Module, images: torch.Tensor) -> float:
    """The same bound for sigmoid probabilities."""
    return logit_tolerance(model, images) / 4
