"""Resource limits checked before any work starts: the size of a data set against a memory
budget, and GPU requests against what one node has.

A data set too large for the machine must fail in seconds with its numbers, not swap the
machine to death an hour into decoding; a GPU request no node can meet would leave Ray
waiting forever.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from braintl.errors import UserError

GB = 1024**3
# Preparing holds about three copies of the tensors at its peak (the preprocessed images,
# the stacked array and its N×C×H×W copy): measured 3.0× on 300 phantoms at 224 px.
PREPARE_COPIES = 3
DEFAULT_BUDGET_FRACTION = 0.5


def machine_memory() -> int:
    """Bytes of memory this process may use: the RAM, or a container's cgroup limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def memory_budget(memory_budget_gb: float | None) -> tuple[int, str]:
    """Bytes of the budget, and whose it is: ``memory_budget_gb``, or None for half this
    machine's memory (:func:`machine_memory`)."""
    if memory_budget_gb is not None:
        return int(memory_budget_gb * GB), "memory_budget_gb"
    memory = machine_memory()
    return int(memory * DEFAULT_BUDGET_FRACTION), f"half of this machine's {memory / GB:.1f} GB"


def decode_workers(peak_bytes: int, memory_budget_gb: float | None, most: int) -> int:
    """Threads that may decode at once: at most ``most``, and no more than the budget holds
    when each decodes the largest file the limits let through (``peak_bytes``), so that many
    large 16-bit scans decode in turn instead of together. At least one: a single file over
    the budget still decodes, alone."""
    budget, _ = memory_budget(memory_budget_gb)
    return max(1, min(most, budget // peak_bytes))


def check_data_size(
    n_images: int,
    image_size: int,
    augment_ratio: float,
    memory_budget_gb: float | None,
    where: str,
) -> None:
    """Fail fast when ``n_images`` listed files would need more than the budget to prepare.

    The estimate is an upper bound taken before decoding: every listed file counted as usable,
    ``augment_ratio`` images per original (1 without augmentation), uint8 3 × size² each, times
    the copies preparing holds at once. ``memory_budget_gb`` None means half this machine's
    memory (:func:`machine_memory`).
    """
    total = math.ceil(n_images * augment_ratio)
    tensor_bytes = total * 3 * image_size * image_size
    peak = tensor_bytes * PREPARE_COPIES
    budget, whose = memory_budget(memory_budget_gb)
    if peak > budget:
        augmented = f" (up to {total} with augmentation)" if total > n_images else ""
        raise UserError(
            f"{where}: {n_images} images{augmented} at {image_size}×{image_size}×3 make "
            f"{tensor_bytes / GB:.2f} GB of tensors, about {peak / GB:.2f} GB while preparing "
            f"({PREPARE_COPIES} copies), over the memory budget of {budget / GB:.2f} GB "
            f"({whose}). Lower image_size, turn augmentation off, use fewer images "
            f"(max_images), or raise the budget (--memory-budget-gb {math.ceil(peak / GB)}) "
            "on a machine with that much memory."
        )


def local_gpus() -> int:
    """GPUs visible here (after CUDA_VISIBLE_DEVICES): what a local Ray can hand out."""
    import torch

    return torch.cuda.device_count()


def gpu_request_problem(name: str, gpus: float, per_node: int | None) -> str | None:
    """Why ``gpus`` for one Ray task or trial can never be scheduled, or None when it can.

    One task runs on one node, so its request must fit the GPUs of a single node, not of the
    cluster: four nodes of one GPU cannot serve a request of 2. Ray shares a GPU in fractions
    (0.25: four trials per card) but takes whole GPUs above one, so 1.5 is refused. On a
    cluster the per-node count is that of its largest GPU node, which an autoscaling cluster
    may not have started yet; ``per_node`` None (a cluster address) checks the form only.
    """
    if gpus > 1 and not float(gpus).is_integer():
        return (
            f"{name}={gpus:g}: Ray shares one GPU in fractions up to 1 and takes whole GPUs "
            f"above that; use a fraction ≤ 1 or a whole number such as {math.ceil(gpus)}"
        )
    if per_node is not None and gpus > per_node:
        have = f"{per_node} GPU{'s' if per_node != 1 else ''}"
        fix = (
            f"Use {name}=0 here, or set ray_address to a cluster with GPU nodes"
            if per_node == 0
            else f"Use at most {name}={per_node}"
        )
        return (
            f"{name}={gpus:g} asks for more than one node has: this machine (local Ray) has "
            f"{have}, and a task runs on one node, so Ray would wait forever. {fix}."
        )
    return None
