"""In-process flow runs against a temporary Prefect server: its database under a home of the
test's (the task cache lives with each run's output, under OUT/.prefect), with a generous
start-up time, as Ray and training keep the CPUs busy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray
from prefect.settings import PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness


@contextmanager
def temporary_prefect(home: Path) -> Iterator[None]:
    settings = {PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: home / "storage"}
    with temporary_settings(settings), prefect_test_harness(server_startup_timeout=180):
        yield


def run_retrain(params, home: Path):
    """The retrain flow's final state, run with a local Ray of its own (none before or after)."""
    from flows.retrain import retrain

    ray.shutdown()
    try:
        with temporary_prefect(home):
            return retrain(params, return_state=True)
    finally:
        ray.shutdown()
