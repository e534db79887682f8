"""The frozen-prefix cache: what frozen blocks make of each image, computed once and shared.

Under ``frozen`` the whole backbone is frozen; under ``finetune`` and each ``progressive`` stage,
every block before the first trainable one is. Their output depends only on the pixels and the
frozen weights, so it is computed once for every image of the tensor set (train, validation and
test alike) and each epoch runs only the trainable rest (:class:`TrainablePart`). Frozen blocks
run in eval mode either way: the strategy keeps their BatchNorm in eval, and no pretrained
backbone has dropout in its blocks. So the cached path computes the logits the whole model would.

Stored through storage below the tensor cache, ``<tensors>/features/<digest>/features.npy``; the
digest covers the backbone, the frozen weights themselves (random ones differ by seed), the
images' shape and the cut, so every trial and fold with the same ones shares one copy. The array
is written under a temporary name and renamed, and a completion marker written last: a reader
sees a whole cache or none. Two racing writers compute the same array; the last rename wins.

A cache larger than ``feature_memory_budget_mb`` is memory-mapped from local storage; on remote
storage, or for a tensor set held only in memory, it is not kept at all and the prefix is
recomputed every batch. A log line says which.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import uuid
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torch.nn.utils.fusion import fuse_conv_bn_eval

from braintl.data.tensors import TensorSet
from braintl.models import BrainTLModel, StrategyPlan
from braintl.models.factory import feature_shape
from braintl.models.model import at_least_float32
from braintl.models.registry import get_entry
from braintl.storage import Location, resolve
from braintl.training.device import BatchSource, autocast, to_device
from braintl.training.inference import EVAL_BATCH_SIZE, predict_logits

log = logging.getLogger(__name__)

FORMAT = 1
FILE = "features.npy"


class TrainablePart(nn.Module):
    """The model from block ``start`` on, fed the activations entering that block."""

    def __init__(self, model: BrainTLModel, start: int):
        super().__init__()
        self.model = model
        self.start = start

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.model.forward_from(activations, self.start)


@dataclass
class PrefixCache:
    """Activations entering block ``start`` for every image (N×C×h×w float32, float64 for a
    float64 model; in memory or memory-mapped), handed out in training batches on the device
    by ``source``."""

    start: int
    features: np.ndarray
    source: BatchSource
    mode: str  # "memory" or "disk"

    def rows(self, index: np.ndarray) -> torch.Tensor:
        """The activations of the images at ``index``, on the host (for prediction)."""
        return torch.from_numpy(np.ascontiguousarray(self.features[index]))

    def logits(self, model: BrainTLModel, index: np.ndarray, batch_size: int) -> torch.Tensor:
        """``model``'s logits for the images at ``index``, running only the blocks from
        ``start`` on (the model must share the cached prefix's frozen weights)."""
        return predict_logits(TrainablePart(model, self.start), self.rows(index), batch_size)


def first_trainable(model: BrainTLModel, plan: StrategyPlan) -> int:
    """The index of the first block ``plan`` trains: everything before it is frozen."""
    return len(model.spec.blocks) - len(plan.blocks)


def prefix_cache(
    model: BrainTLModel,
    plan: StrategyPlan,
    tensors: TensorSet,
    device: torch.device,
    budget_mb: float,
) -> PrefixCache | None:
    """The cache for ``model`` cut before its first trainable block, computed or reused; None
    when nothing is frozen, or when it would exceed ``budget_mb`` and cannot be streamed."""
    start = first_trainable(model, plan)
    if start == 0:
        return None
    shape = (len(tensors), *_activation_shape(model, start, tensors.images, device))
    dtype = _cache_dtype(model)
    megabytes = math.prod(shape) * dtype.itemsize / 2**20
    within = megabytes <= budget_mb
    location = _location(model, start, tensors)
    what = f"{model.spec.name} blocks 1-{start}, {megabytes:.0f} MB"
    if not within and (location is None or location.protocol != "file"):
        log.warning(
            "feature cache (%s) exceeds the %s MB budget and cannot be memory-mapped from %s: "
            "recomputing the frozen prefix every batch",
            what,
            budget_mb,
            location.url if location else "a tensor set held in memory",
        )
        return None
    if location is None:
        features = _compute(model, start, tensors.images, np.empty(shape, dtype), device)
        reused = False
    else:
        reused = location.is_complete()
        features = (
            _read(location, within)
            if reused
            else _publish(location, model, start, tensors.images, shape, dtype, device, within)
        )
    mode = "memory" if within else "disk"
    if within:
        log.info("feature cache (%s) %s, in memory", what, "reused" if reused else "computed")
    else:
        log.warning(
            "feature cache (%s) exceeds the %s MB budget: streaming it from disk at %s",
            what,
            budget_mb,
            location.url,
        )
    source = BatchSource(features, device, resident=None if within else False)
    return PrefixCache(start, features, source, mode)


def _cache_dtype(model: BrainTLModel) -> np.dtype:
    """float32 (also for bf16 autocast), or float64 for a float64 model."""
    wide = torch.promote_types(next(model.parameters()).dtype, torch.float32)
    return np.dtype(str(wide).removeprefix("torch."))


def _activation_shape(
    model: BrainTLModel, start: int, images: np.ndarray, device: torch.device
) -> tuple[int, ...]:
    if start == len(model.spec.blocks):  # the whole backbone: known without running it
        return feature_shape(get_entry(model.spec.name), images.shape[-1])
    one = _compute(model, start, images[:1], None, device)
    return tuple(one.shape[1:])


def _location(model: BrainTLModel, start: int, tensors: TensorSet) -> Location | None:
    """``<tensors>/features/<digest>``, or None for a tensor set with no storage URL."""
    if tensors.url is None:
        return None
    digest = hashlib.sha256()
    key = {
        "format": FORMAT,
        "backbone": model.spec.name,
        "start": start,
        "images": list(tensors.images.shape),
        "tensors": tensors.meta.get("key"),
    }
    digest.update(json.dumps(key, sort_keys=True).encode())
    frozen = model.spec.blocks[:start]
    for name, value in model.state_dict().items():
        inner = name.removeprefix("backbone.")
        if inner != name and any(block.owns(inner) for block in frozen):
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return resolve(tensors.url).join("features", digest.hexdigest()[:24])


@torch.no_grad()
def _compute(
    model: BrainTLModel,
    start: int,
    images: np.ndarray,
    out: np.ndarray | None,
    device: torch.device,
) -> np.ndarray:
    """``model.prefix`` of ``images`` (through :func:`_inference_prefix`), batch by batch,
    into ``out`` (None: a new array)."""
    prefix, layout = _inference_prefix(model, start, device)
    chunks = []
    with autocast(device):
        for first in range(0, len(images), EVAL_BATCH_SIZE):
            batch = to_device(torch.from_numpy(images[first : first + EVAL_BATCH_SIZE]), device)
            if layout is not None:
                batch = batch.contiguous(memory_format=layout)
            batch = model.normalize(batch)
            activations = at_least_float32(prefix(batch)).cpu().numpy()
            if out is None:
                chunks.append(activations)
            else:
                out[first : first + len(activations)] = activations
    return np.concatenate(chunks) if out is None else out


def _inference_prefix(
    model: BrainTLModel, start: int, device: torch.device
) -> tuple[nn.Module, torch.memory_format | None]:
    """A copy of blocks ``0..start-1`` for the cache pass, in eval mode, and the memory format
    its input takes (None: as it comes). The model itself is left as it is.

    - Each convolution followed by its BatchNorm is folded into one convolution (torch.fx's
      ``fuse``, as inference engines do): the same function up to the rounding of the folded
      weights, and one pass less over every activation. A block torch.fx cannot trace is kept
      as it is.
    - On the CPU, in float32, the copy runs channels_last, where oneDNN's convolutions run
      about twice as fast. Elsewhere in the model's own layout (channels_last already on CUDA,
      see ``prepare_model``; float64 test models).

    MobileNetV2's whole backbone at 96 px over 1 500 images on 2 cores, both channels_last:
    4.5 s plain, 2.6 s folded.
    """
    blocks = [module for modules in model._block_modules[:start] for module in modules]
    prefix = nn.Sequential(*_folded([copy.deepcopy(module).eval() for module in blocks]))
    if device.type == "cpu" and next(model.parameters()).dtype == torch.float32:
        return prefix.to(memory_format=torch.channels_last), torch.channels_last
    return prefix, None


def _folded(modules: list[nn.Module]) -> list[nn.Module]:
    """``modules`` (eval mode, run in turn) with each Conv+BatchNorm pair folded: pairs in this
    list, and pairs inside a module that torch.fx can trace (one with data-dependent control
    flow is kept as it is: unfolded, it computes the same)."""
    out: list[nn.Module] = []
    for module in modules:
        if isinstance(module, nn.BatchNorm2d):
            if out and isinstance(out[-1], nn.Conv2d) and module.track_running_stats:
                out[-1] = fuse_conv_bn_eval(out[-1], module)
                continue
        elif any(isinstance(inner, nn.BatchNorm2d) for inner in module.modules()):
            try:
                module = fuse(module, inplace=True)
            except Exception as exc:  # noqa: BLE001  (TraceError, TypeError...: keep it as it is)
                log.debug("%s not folded for the feature pass: %s", type(module).__name__, exc)
        out.append(module)
    return out


def _publish(
    location: Location,
    model: BrainTLModel,
    start: int,
    images: np.ndarray,
    shape: tuple[int, ...],
    dtype: np.dtype,
    device: torch.device,
    within: bool,
) -> np.ndarray:
    """Compute the cache and write it atomically (file, then completion marker).

    Within the budget it is computed in memory and written from there: no pages of a mapped
    file to fault in, sync and read back (0.33-0.49 s for the 83 MB that a frozen MobileNetV2
    at 96 px makes of 1 800 images, against 0.20-0.30 s to write them from memory). Over the
    budget (local files only) it is computed straight into the file, which training then maps."""
    target = location.join(FILE)
    if within:
        features = _compute(model, start, images, np.empty(shape, dtype), device)
        target.write_array(features)
        location.mark_complete({"shape": list(shape)})
        return features
    os.makedirs(location.path, exist_ok=True)
    partial = f"{target.path}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
        _compute(model, start, images, out, device)
        out.flush()
        del out
        os.replace(partial, target.path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
    location.mark_complete({"shape": list(shape)})
    return _read(location, within=False)


def _read(location: Location, within: bool) -> np.ndarray:
    """The whole array in memory, or a copy-on-write memory map of the local file."""
    target = location.join(FILE)
    if within:
        return target.read_array()
    return np.load(target.path, mmap_mode="c")
