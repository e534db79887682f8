"""What a run ran on: braintl's code version, package versions and hardware, kept in
``run.json`` for the report.

Versions come from installed package metadata, so recording them imports nothing heavy.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

from braintl.codeversion import code_version

PACKAGES = (
    "braintl",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "pillow",
    "scikit-learn",
    "prefect",
    "ray",
    "s3fs",
)


def versions() -> dict[str, str | None]:
    """Installed version of each package that shapes results or runs them (None: absent)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def hardware() -> dict:
    """This machine: OS, CPU count, memory and CUDA devices (the driver's view, if any)."""
    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gb": round(memory / 2**30, 1),
        "gpus": gpus,
    }


def environment() -> dict:
    return {"code": code_version(), "versions": versions(), "hardware": hardware()}
