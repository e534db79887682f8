"""Hold a training process just after an epoch's checkpoint, where fault-injection tests kill it.

A test that kills a worker mid-run must find one alive at a known step on any CPU: racing a
timer against tiny epochs does not (a fast CPU finishes first). With
``BRAINTL_PAUSE_AFTER_CHECKPOINT=<epoch>:<folder>`` in the environment (Ray workers and
subprocesses inherit it), a run that has just checkpointed epoch ``<epoch>`` writes
``<folder>/paused-<pid>`` and waits until ``<folder>/release`` exists, ten minutes at most, so
the test kills it there and releases whatever comes after. With ``BRAINTL_PAUSE_ONLY=<text>``
too, only runs whose checkpoint URL contains ``<text>`` hold (``/folds/``: cross-validation, not
the sweep's trials). Unset, it costs one lookup per epoch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_ENV = "BRAINTL_PAUSE_AFTER_CHECKPOINT"
ONLY_ENV = "BRAINTL_PAUSE_ONLY"
RELEASE = "release"
MAX_WAIT_S = 600.0


def requested(epoch: int, checkpoint_url: str) -> str | None:
    """The pause folder when the environment asks for a pause after this epoch's checkpoint
    (so that checkpoint must be written), else None."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return None
    at, _, folder = spec.partition(":")
    if epoch != int(at) or os.environ.get(ONLY_ENV, "") not in checkpoint_url:
        return None
    return folder


def after_checkpoint(epoch: int, checkpoint_url: str) -> None:
    """Wait here if the environment asks for a pause after this epoch's checkpoint."""
    folder = requested(epoch, checkpoint_url)
    if folder is None:
        return
    folder_path = Path(folder)
    release = folder_path / RELEASE
    if release.exists():
        return
    folder_path.mkdir(parents=True, exist_ok=True)
    (folder_path / f"paused-{os.getpid()}").write_text(str(epoch))
    deadline = time.monotonic() + MAX_WAIT_S
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
