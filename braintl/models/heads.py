"""Classifier heads: the seed's two and a light global-pooling one.

Every head returns one tumor logit per image. The seed's ``paper`` head ends in Dense(2) with
softmax; we keep its two units and return ``z[:, 1] - z[:, 0]``, because
``softmax(z)[1] == sigmoid(z1 - z0)``: two-class cross-entropy on ``z`` equals binary
cross-entropy with logits on the difference, so every model trains with one loss.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from braintl.errors import UserError

HEADS = ("paper", "paper_vgg_ft", "gap")
# (hidden units, dropout rates) when the caller gives none; None = the head has no hidden layer.
DEFAULTS: dict[str, tuple[int | None, tuple[float, ...]]] = {
    "paper": (256, (0.1,)),
    "paper_vgg_ft": (510, (0.23, 0.3)),
    "gap": (None, (0.2,)),
}


class Head(nn.Module):
    """A named ``nn.Sequential`` ending in Linear(2) (read as a softmax pair) or Linear(1)."""

    def __init__(
        self,
        kind: str,
        units: int | None,
        dropout: tuple[float, ...],
        layers: OrderedDict[str, nn.Module],
    ):
        super().__init__()
        self.kind = kind
        self.units = units
        self.dropout = dropout
        self.layers = nn.Sequential(layers)
        self.pair = self.layers[-1].out_features == 2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.layers(features)
        return z[:, 1] - z[:, 0] if self.pair else z[:, 0]


def _rates(kind: str, dropout: float | Sequence[float] | None) -> tuple[float, ...]:
    default = DEFAULTS[kind][1]
    if dropout is None:
        return default
    rates = (float(dropout),) * len(default) if isinstance(dropout, int | float) else tuple(dropout)
    if len(rates) != len(default) or not all(0 <= r < 1 for r in rates):
        raise UserError(
            f"head {kind!r} takes {len(default)} dropout rate(s) in [0, 1) (or one for all), "
            f"got {dropout!r}"
        )
    return rates


def build_head(
    kind: str,
    feature_shape: tuple[int, int, int],
    units: int | None = None,
    dropout: float | Sequence[float] | None = None,
) -> Head:
    """The head ``kind`` for backbone features of shape (C, h, w).

    ``units`` is the hidden layer's width (the seed's Dense(units)); ``dropout`` one rate per
    dropout layer, or a single rate for all of them.
    """
    if kind not in DEFAULTS:
        raise UserError(f"unknown head {kind!r}: choose one of {', '.join(HEADS)}")
    default_units, _ = DEFAULTS[kind]
    if units is not None and default_units is None:
        raise UserError(f"head {kind!r} has no hidden layer, so head_units does not apply")
    if units is not None and units < 1:
        raise UserError(f"head_units must be at least 1, got {units}")
    units = units or default_units
    rates = _rates(kind, dropout)
    channels, height, width = feature_shape
    pool = [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
    if kind == "paper":  # Flatten → Dense(units, relu) → Dropout → BatchNorm → Dense(2)
        layers = [
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(channels * height * width, units)),
            ("relu", nn.ReLU(inplace=True)),
            ("drop", nn.Dropout(rates[0])),
            ("bn", nn.BatchNorm1d(units)),
            ("fc2", nn.Linear(units, 2)),
        ]
    elif kind == "paper_vgg_ft":  # GAP → BN → Dropout → Dense(units, relu) → BN → Dropout → Dense
        layers = [
            *pool,
            ("bn1", nn.BatchNorm1d(channels)),
            ("drop1", nn.Dropout(rates[0])),
            ("fc1", nn.Linear(channels, units)),
            ("relu", nn.ReLU(inplace=True)),
            ("bn2", nn.BatchNorm1d(units)),
            ("drop2", nn.Dropout(rates[1])),
            ("fc2", nn.Linear(units, 1)),
        ]
    else:  # gap: GAP → Dropout → Dense(1)
        layers = [*pool, ("drop", nn.Dropout(rates[0])), ("fc", nn.Linear(channels, 1))]
    return Head(kind, units, rates, OrderedDict(layers))
