"""What every backbone declares, so strategies and caches can reason about it without knowing it."""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def under(name: str, prefix: str) -> bool:
    """True when the dotted ``name`` is ``prefix`` or lies inside it (``features.1`` is not
    inside ``features.10``, which a plain ``startswith`` would get wrong)."""
    return name == prefix or name.startswith(prefix + ".")


@dataclass(frozen=True)
class Block:
    """A unit of (un)freezing: the backbone modules, by dotted name, that belong to it."""

    name: str
    modules: tuple[str, ...]

    def owns(self, name: str) -> bool:
        """Whether the parameter or module ``name`` (relative to the backbone) is in this block."""
        return any(under(name, prefix) for prefix in self.modules)


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone's contract with the rest of braintl.

    ``blocks`` run from input to output and together own every backbone parameter (a test
    checks this for every registered model); their modules, in order, are the backbone's
    forward pass, so a frozen-prefix cache can cut it at any block boundary. Progressive
    unfreezing walks them backwards and ``finetune`` trains the last one. ``mean``/``std`` are
    in [0, 1] units: the normalisation the pretrained weights were trained with.
    ``pretrained`` says where ``weights="imagenet"`` comes from, ``None`` when the architecture
    has no pretrained weights. ``imports``: the modules its builder imports, which
    :func:`~braintl.models.factory.preload` can load ahead (through
    :func:`~braintl.models.without_dynamo.import_library`).
    """

    name: str
    blocks: tuple[Block, ...]
    feature_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    strategies: tuple[str, ...]
    pretrained: str | None
    imports: tuple[str, ...] = ()
