"""The backbone registry, in timm's style: builders register under a name with their spec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from braintl.errors import UserError
from braintl.models.spec import BackboneSpec
from braintl.models.without_dynamo import import_library

Builder = Callable[[bool], nn.Module]


@dataclass(frozen=True)
class Entry:
    """A registered backbone: ``build(pretrained)`` returns the feature extractor (N×C×h×w)."""

    spec: BackboneSpec
    builder: Builder

    def build(self, pretrained: bool) -> nn.Module:
        for module in self.spec.imports:  # before the builder's own import, which then finds it
            import_library(module)
        return self.builder(pretrained)


_REGISTRY: dict[str, Entry] = {}


def register(spec: BackboneSpec) -> Callable[[Builder], Builder]:
    def decorate(build: Builder) -> Builder:
        if spec.name in _REGISTRY:
            raise ValueError(f"backbone {spec.name!r} is registered twice")
        _REGISTRY[spec.name] = Entry(spec, build)
        return build

    return decorate


def get_entry(name: str) -> Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(
            f"unknown backbone {name!r}: choose one of {', '.join(list_models())}"
        ) from None


def list_models() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)
