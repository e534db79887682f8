"""``create_model``: a registered backbone, a head and starting weights, as one BrainTLModel."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence

import torch

from braintl.errors import UserError
from braintl.models import backbones  # noqa: F401  (registers the backbones)
from braintl.models.heads import build_head
from braintl.models.model import BrainTLModel
from braintl.models.registry import Entry, get_entry
from braintl.models.weights import WeightsError, load_state_dict, read_state_dict
from braintl.models.without_dynamo import import_library, meta_build

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def feature_shape(entry: Entry, image_size: int) -> tuple[int, int, int]:
    """(C, h, w) of the backbone's output, from one zero image through the backbone with zero
    weights, once per process (a sweep builds the same model for every trial and fold). Built
    without random initialisation (:func:`meta_build`), so VGG-16 at 224 px takes about 0.3 s.
    Not a dry run on the meta device: there torch runs batch norm through its Python
    references, whose first call imports torch._dynamo, about 2 CPU s a process."""
    with meta_build():
        probe = entry.build(False)
    probe = probe.to_empty(device="cpu").eval().requires_grad_(False)
    for tensor in (*probe.parameters(), *probe.buffers()):
        tensor.zero_()  # to_empty's memory may hold NaNs or subnormals, which are slow
    try:
        with torch.no_grad():
            out = probe(torch.zeros(1, 3, image_size, image_size))
    except RuntimeError as exc:
        raise UserError(
            f"image_size {image_size} is too small for {entry.spec.name} "
            f"({' '.join(str(exc).split())}); use a larger one"
        ) from None
    _, channels, height, width = out.shape
    return channels, height, width


def preload(name: str, *first: str) -> None:
    """Start importing the modules ``first``, then what backbone ``name``'s builder imports,
    in a background thread, so the imports overlap what the caller does next (decoding the
    images). The builder's own import then finds the modules loaded, or waits for them. An
    unknown name or a failed import is left to :func:`create_model` to report."""
    try:
        modules = (*first, *get_entry(name).spec.imports)
    except UserError:
        return
    if modules:
        threading.Thread(
            target=_import_all, args=(modules,), name="braintl-preload", daemon=True
        ).start()


def _import_all(modules: Sequence[str]) -> None:
    for module in modules:
        try:
            import_library(module)
        except Exception as exc:  # noqa: BLE001  (the builder's import says what is wrong)
            log.debug("preloading %s failed: %s", module, exc)


def create_model(
    name: str,
    weights: str = "none",
    head: str = "paper",
    num_classes: int = 2,
    head_units: int | None = None,
    dropout: float | Sequence[float] | None = None,
    image_size: int = 224,
) -> BrainTLModel:
    """Build backbone ``name`` (see :func:`list_models`) with classifier ``head``.

    ``weights``: ``"imagenet"`` (torchvision's or timm's own weights API and cache; failure
    raises :class:`WeightsError`, never falls back to random weights), ``"none"`` (random
    initialisation), or any storage URL of a state dict of the whole model or of its backbone.
    ``head_units``/``dropout`` default to the head's own (see ``braintl.models.heads``).
    ``image_size`` fixes the input size the ``paper`` head's Flatten is built for.
    ``num_classes`` must be 2: the model returns one tumor logit per image.
    """
    entry = get_entry(name)
    if num_classes != 2:
        raise UserError(
            f"num_classes={num_classes}: braintl models are binary (tumor / no tumor); use 2"
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image_size must be a positive integer, got {image_size!r}")
    features = feature_shape(entry, image_size)
    head_module = build_head(head, features, head_units, dropout)
    if weights == "imagenet" and entry.spec.pretrained is None:
        raise WeightsError(
            f"{name} has no ImageNet weights: use weights='none' or a URL of a saved state dict"
        )
    backbone = entry.build(weights == "imagenet")
    config = {
        "name": name,
        "head": head,
        "num_classes": num_classes,
        "head_units": head_module.units,
        "dropout": head_module.dropout,
        "image_size": image_size,
    }
    model = BrainTLModel(entry.spec, backbone, head_module, config)
    if weights not in ("imagenet", "none"):
        load_state_dict(model, read_state_dict(weights), weights)
    return model
