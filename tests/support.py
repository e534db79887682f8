"""What the tests share: a free port on 127.0.0.1, waiting for a server started there, a fresh
interpreter on this checkout, and the small retrain run's parameters."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.params import RetrainParams

REPO = Path(__file__).resolve().parents[1]

# The smallest run that goes through the whole flow: one trial per model, three folds (fold 0
# tunes, two are scored) of 32 px images, a quarter of the groups held out for testing.
SMALL_RUN = {
    "profile": "quick",
    "backbones": ["scratch_cnn"],
    "image_size": 32,
    "epochs": 2,
    "folds": 3,
    "test_fraction": 0.25,
    "sweep": {"num_samples": 1},
}
# Two models, so the report and champion have a comparison to make.
TWO_MODELS = {"backbones": ["scratch_cnn", "mobilenet_v2"], "strategies": ["frozen"]}


def small_params(data_url: str | Path, out_url: str | Path, **fields: Any) -> RetrainParams:
    """``SMALL_RUN`` from ``data_url`` into ``out_url``, ``fields`` overriding it."""
    from flows.params import RetrainParams  # ray and torch: only for the tests that use it

    return RetrainParams(
        **{**SMALL_RUN, "data_url": str(data_url), "out_url": str(out_url), **fields}
    )


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's pick, so parallel sessions do not collide)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:``port`` (OSError: not yet)."""
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return True


def wait_until_up(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen, log: Path, timeout: float
) -> None:
    """Until ``ready()`` holds (an OSError from it means not yet); fails with the end of the
    server's ``log`` when its process exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{log.read_text()[-3000:]}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} not up in {timeout} s:\n{log.read_text()[-3000:]}")


def run_python(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """``python ARGS`` in a fresh interpreter that imports this checkout, output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
