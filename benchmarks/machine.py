"""What every benchmark result records about where and when it ran: timings on a shared
machine mean little without the CPU, the ISA torch dispatches to and the load around them."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or "unknown"


def describe(load_before: tuple[float, float, float]) -> dict:
    """Date, machine and the 1/5/15-minute load averages before the benchmark and now."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "isa": torch.backends.cpu.get_cpu_capability(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
    }
