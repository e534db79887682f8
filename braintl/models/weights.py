"""Where a model's starting weights come from: ImageNet (through torchvision's and timm's own
download caches), a state dict at any storage URL, or nothing.

ImageNet weights are never replaced by random ones behind the user's back: a failed download
is an error that says which cache to fill and how, since GPU clusters are often air-gapped.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlparse

import safetensors.torch
import torch

from braintl.errors import UserError
from braintl.models.model import BrainTLModel
from braintl.storage import resolve

T = TypeVar("T")


class WeightsError(UserError):
    """Weights could not be fetched or do not fit the model; the message says what to do."""


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def imagenet_cache(hf_hub_id: str | None = None) -> tuple[str, str]:
    """(directory, environment variable that moves it) where the ImageNet weights are cached.

    torchvision and timm's URL-hosted weights go through ``torch.hub`` (TORCH_HOME); timm's
    Hugging Face-hosted weights go to the Hugging Face cache (HF_HOME).
    """
    if hf_hub_id:
        from huggingface_hub import constants

        return constants.HF_HUB_CACHE, "HF_HOME"
    return os.path.join(torch.hub.get_dir(), "checkpoints"), "TORCH_HOME"


def fetch_imagenet(
    model_name: str, source: str, url: str | None, hf_hub_id: str | None, build: Callable[[], T]
) -> T:
    """Run ``build`` (which downloads or reads cached weights), turning failure into advice."""
    try:
        return build()
    except (OSError, RuntimeError, ValueError) as exc:
        cache, env = imagenet_cache(hf_hub_id)
        where = f"{hf_hub_id} on the Hugging Face Hub" if hf_hub_id else url
        item = hf_hub_id if hf_hub_id else posixpath.basename(urlparse(url or "").path)
        raise WeightsError(
            f"cannot fetch the ImageNet weights of {model_name} ({source}, from {where}): "
            f"{_one_line(exc)}. They are cached in {cache} (set {env} to move it). On an "
            'air-gapped machine, pre-seed that cache: run `python -c "from braintl.models import '
            f"create_model; create_model('{model_name}', weights='imagenet')\"` once on a "
            f"connected machine, then copy {item} from its cache into {cache} here (or point "
            f"{env} at a shared copy); or use weights='none' or a URL to a saved state dict."
        ) from exc


def read_state_dict(url: str) -> dict[str, torch.Tensor]:
    """Read a state dict saved with ``torch.save`` or, for a ``.safetensors`` URL (what a
    published model holds), with safetensors, from any storage URL (tensors only)."""
    try:
        data = resolve(url).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise WeightsError(
            f"weights {url!r}: no such file; weights must be 'imagenet', 'none' or a URL "
            "(local path, file://, s3://) of a state dict saved with torch.save"
        ) from None
    if url.endswith(".safetensors"):
        try:
            return dict(safetensors.torch.load(data))
        except Exception as exc:  # safetensors raises its own error type and others
            raise WeightsError(
                f"weights {url}: not a safetensors file ({_one_line(exc)}); write one with "
                "safetensors.torch.save_file(model.state_dict(), path)"
            ) from exc
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the same thing to the user
        raise WeightsError(
            f"weights {url}: not a PyTorch state dict ({_one_line(exc)}); save one with "
            "torch.save(model.state_dict(), path)"
        ) from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(
            f"weights {url}: holds a {type(state).__name__}, not a state dict of tensors; save "
            "one with torch.save(model.state_dict(), path)"
        )
    return dict(state)


def load_state_dict(model: BrainTLModel, state: Mapping[str, torch.Tensor], url: str) -> str:
    """Load ``state`` into the whole model or, when its keys are the backbone's, the backbone.

    Strict: every key must match by name and shape, or nothing is loaded. Returns which part
    was loaded ("model" or "backbone").
    """
    whole = bool(state) and all(k.startswith(("backbone.", "head.")) for k in state)
    target = model if whole else model.backbone
    part = "model" if whole else "backbone"
    expected = target.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    reshaped = sorted(
        f"{k}: file {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected.keys() & state.keys()
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or reshaped:
        problems = [
            f"{len(items)} {what} (e.g. {', '.join(items[:3])})"
            for items, what in (
                (missing, "missing keys"),
                (unexpected, "unexpected keys"),
                (reshaped, "keys of another shape"),
            )
            if items
        ]
        c = model.config
        raise WeightsError(
            f"weights {url} do not fit {c['name']} (head={c['head']}, head_units="
            f"{c['head_units']}, image_size={c['image_size']}; read as a {part} state dict): "
            f"{'; '.join(problems)}. Build the model with the backbone, head, head_units and "
            "image_size it was saved with."
        )
    target.load_state_dict(state)
    return part
