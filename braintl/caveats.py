"""What a run's figures are, said first: the warnings its report and log open with, and whether
the seed's published figures may stand beside a model's.

The seed measured ImageNet-pretrained backbones (and one CNN from scratch) on real MRI under its
leaky protocol, one model scored once on one random split. Its figure stands beside one of ours
only when our model started from the same weights, on real scans:

- protocol ``paper``: like-for-like when the settings are the seed's too (a replica, see
  :mod:`braintl.replica`), else labelled with how they differ;
- protocol ``groups``: shown, labelled "seed, leaky protocol, not comparable". A reader holding
  the published claim wants to see it beside the leak-free figure, and to be told the two measure
  different things; no difference is taken, the leakage audit measures the protocol's share.

Random-initialised backbones and synthetic data get no seed figure at all: a number beside them
would invite a comparison that means nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from braintl.data.phantoms import is_phantom_set
from braintl.models.registry import get_entry
from braintl.storage import resolve

RANDOM_INIT_WARNING = (
    "random-initialised stand-ins: this is not transfer learning; the seed's figures are not "
    "comparable"
)
SYNTHETIC_WARNING = (
    "synthetic data (phantoms): these figures say nothing about brain MRI, and nothing here is "
    "compared with the seed's real-data figures"
)
SMOKE_TEST_PROFILE = "quick"  # flows/params.py: the profile built to check the plumbing
SMOKE_TEST_WARNING = (
    "a smoke test (profile quick): it checks that the pipeline runs, not how well a model can "
    "do; its figures say little and its model is not meant for use. Train models with profile "
    "cpu on a CPU or paper on GPUs"
)
LEAKY_REFERENCE = "seed, leaky protocol, not comparable"


def seed_weights(backbone: str) -> str:
    """The weights the seed started ``backbone`` from: ImageNet's where it has them."""
    return "imagenet" if get_entry(backbone).spec.pretrained is not None else "none"


def random_stand_ins(models: Iterable[tuple[str, str]]) -> list[str]:
    """Backbones, of (backbone, weights) pairs, that have ImageNet weights but started random."""
    return sorted({b for b, w in models if w == "none" and seed_weights(b) == "imagenet"})


def run_warnings(
    models: Iterable[tuple[str, str]], synthetic: bool, smoke_test: bool = False
) -> list[str]:
    """The plain warnings a run's report and log open with; empty when there is none."""
    warnings = [f"{SMOKE_TEST_WARNING}."] if smoke_test else []
    stand_ins = random_stand_ins(models)
    if stand_ins:
        warnings.append(
            f"{RANDOM_INIT_WARNING} ({', '.join(stand_ins)} started from random weights, not "
            "ImageNet's)."
        )
    if synthetic:
        warnings.append(f"{SYNTHETIC_WARNING}.")
    return warnings


def seed_comparison(
    backbone: str, weights: str, protocol: str, synthetic: bool, departures: list[str]
) -> dict:
    """Whether the seed's figure is ``shown`` beside this model's and whether it is
    ``comparable`` (like-for-like), with the ``label`` the report prints."""
    expected = seed_weights(backbone)
    if synthetic:
        return _hidden("not shown: synthetic data, the seed's figures are of real scans")
    if weights != expected:
        why = f"not shown: weights {weights}, the seed's {backbone} started from {expected}"
        return _hidden(why)
    if protocol != "paper":
        return {"shown": True, "comparable": False, "label": LEAKY_REFERENCE}
    if departures:
        label = f"seed, same protocol, other settings ({', '.join(departures)}): not like-for-like"
        return {"shown": True, "comparable": False, "label": label}
    return {"shown": True, "comparable": True, "label": "seed, same protocol and settings"}


def _hidden(label: str) -> dict:
    return {"shown": False, "comparable": False, "label": label}


def synthetic_data(tensors_url: str) -> bool:
    """Whether the tensor set at ``tensors_url`` was built from phantoms, by its manifest."""
    manifest = resolve(tensors_url).join("manifest.json").read_json()
    return is_phantom_set(record["relpath"] for record in manifest["records"])
