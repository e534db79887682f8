"""Transfer strategies, each resolved to the exact set of parameters that train.

A strategy is data (a :class:`StrategyPlan`) before it is an effect (:func:`apply_strategy`), so
tests can compare the plan with what actually changed, and the training loop can build its
optimizer from the same plan it applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from braintl.errors import UserError
from braintl.models.model import BrainTLModel
from braintl.models.registry import get_entry

STRATEGIES = ("frozen", "finetune", "progressive", "full")
# Strategies that adapt pretrained features, and so train the backbone slower than the head.
_SCALED = ("finetune", "progressive")


@dataclass(frozen=True)
class StrategyPlan:
    """What trains: the head always, plus ``blocks`` of the backbone (input → output).

    ``trainable`` holds the parameter names (as in ``model.named_parameters()``) that get
    ``requires_grad``; ``stage`` is the progressive stage (0 for the other strategies).
    """

    name: str
    stage: int
    blocks: tuple[str, ...]
    trainable: frozenset[str]

    def param_groups(
        self, model: nn.Module, lr: float, backbone_lr_factor: float = 1.0
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the head at ``lr``, trainable backbone parameters at
        ``lr × backbone_lr_factor`` for ``finetune`` and ``progressive`` (at ``lr`` for ``full``,
        which also serves models trained from scratch). Empty groups are left out."""
        head, backbone = [], []
        for name, param in model.named_parameters():
            if name in self.trainable:
                (head if name.startswith("head.") else backbone).append(param)
        factor = backbone_lr_factor if self.name in _SCALED else 1.0
        groups = [
            {"name": "head", "params": head, "lr": lr},
            {"name": "backbone", "params": backbone, "lr": lr * factor},
        ]
        return [group for group in groups if group["params"]]


def list_strategies(model: str | None = None) -> tuple[str, ...]:
    """Every strategy, or those that backbone ``model`` supports."""
    return STRATEGIES if model is None else get_entry(model).spec.strategies


def resolve_strategy(model: BrainTLModel, name: str, stage: int = 0) -> StrategyPlan:
    """The plan for strategy ``name`` on ``model``.

    ``frozen``: head only. ``finetune``: the last conv block and the head. ``progressive``:
    stage ``s`` trains the last ``s`` blocks and the head (0 = frozen, all blocks = full).
    ``full``: everything.
    """
    spec = model.spec
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    if name not in spec.strategies:
        why = " (it has no pretrained weights to keep)" if spec.pretrained is None else ""
        raise UserError(
            f"strategy {name!r} does not apply to {spec.name}{why}: "
            f"choose one of {', '.join(spec.strategies)}"
        )
    count = len(spec.blocks)
    if name == "progressive":
        if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage <= count:
            raise UserError(
                f"progressive stage {stage!r} is out of range for {spec.name}: choose 0..{count} "
                f"(0 = frozen, {count} = every block)"
            )
        opened = stage
    elif stage != 0:
        raise UserError(f"stage applies to the progressive strategy only, not {name!r}")
    else:
        opened = {"frozen": 0, "finetune": 1, "full": count}[name]
    blocks = spec.blocks[count - opened :]
    trainable = frozenset(
        param
        for param, _ in model.named_parameters()
        if name == "full"
        or param.startswith("head.")
        or any(block.owns(param.removeprefix("backbone.")) for block in blocks)
    )
    return StrategyPlan(name, stage, tuple(block.name for block in blocks), trainable)


def frozen_state_keys(model: BrainTLModel, plan: StrategyPlan) -> frozenset[str]:
    """The state-dict entries (parameters and buffers) of the backbone blocks ``plan`` keeps
    frozen. Training cannot change them, so checkpoints and best-epoch snapshots leave them out:
    a model rebuilt from the same weights already holds them."""
    if plan.name == "full":
        return frozenset()
    opened = [block for block in model.spec.blocks if block.name in plan.blocks]
    return frozenset(
        key
        for key in model.state_dict()
        if key.startswith("backbone.")
        and not any(block.owns(key.removeprefix("backbone.")) for block in opened)
    )


def apply_strategy(model: BrainTLModel, plan: StrategyPlan) -> None:
    """Set ``requires_grad`` to exactly ``plan.trainable`` and keep the BatchNorm layers of
    frozen blocks in eval mode (now and after every ``model.train()``), so their running
    statistics stay those the weights were trained with."""
    names = {name for name, _ in model.named_parameters()}
    if not plan.trainable <= names:
        raise ValueError(
            f"plan {plan.name!r} names parameters {model.spec.name} does not have: "
            "resolve it for this model"
        )
    for name, param in model.named_parameters():
        param.requires_grad_(name in plan.trainable)
    opened = [block for block in model.spec.blocks if block.name in plan.blocks]
    model.frozen_bn = tuple(
        f"backbone.{name}"
        for name, module in model.backbone.named_modules()
        if isinstance(module, _BatchNorm) and not any(block.owns(name) for block in opened)
    )
    model.plan = plan
    model.train(model.training)
