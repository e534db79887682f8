"""Backbones, heads, transfer strategies and weight loading, behind a timm-style registry.

Typical use (``uint8_images``: N×3×H×W, values 0..255)::

    model = create_model("resnet50", weights="imagenet", head="paper", image_size=224)
    plan = resolve_strategy(model, "finetune")
    apply_strategy(model, plan)
    optimizer = torch.optim.Adam(plan.param_groups(model, lr=1e-3, backbone_lr_factor=0.1))
    logits = model(uint8_images)  # [N] tumor logits; normalisation happens inside
"""

from braintl.models.factory import create_model, preload
from braintl.models.heads import HEADS
from braintl.models.model import BrainTLModel
from braintl.models.registry import list_models
from braintl.models.spec import BackboneSpec, Block
from braintl.models.strategies import (
    STRATEGIES,
    StrategyPlan,
    apply_strategy,
    frozen_state_keys,
    list_strategies,
    resolve_strategy,
)
from braintl.models.weights import WeightsError

__all__ = [
    "HEADS",
    "STRATEGIES",
    "BackboneSpec",
    "Block",
    "BrainTLModel",
    "StrategyPlan",
    "WeightsError",
    "apply_strategy",
    "create_model",
    "frozen_state_keys",
    "list_models",
    "list_strategies",
    "preload",
    "resolve_strategy",
]
