"""Reliability with real processes and servers on 127.0.0.1: a Ray worker killed mid-trial, the
flow process killed mid-sweep and rerun, the S3 endpoint going away, two runs at once.

Each scenario appends what it measured (recovered or failed, seconds) to
``$BRAINTL_TEST_ARTIFACTS/reliability.jsonl`` (default ``<repo>/test-artifacts/``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
from faults import actor_pids
from ray import tune

from braintl.storage import resolve
from braintl.tuning import SweepConfig, run_sweep

REPO = Path(__file__).resolve().parents[1]


def _record(scenario: str, **figures) -> None:
    """Keep what a scenario measured, for the issue's note; printed too (``pytest -s``)."""
    folder = Path(os.environ.get("BRAINTL_TEST_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"scenario": scenario, **figures})
    with (folder / "reliability.jsonl").open("a") as fh:
        fh.write(line + "\n")
    print(line)


def _wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.slow
def test_killed_ray_worker_retries_its_trial_from_the_checkpoint(tensors_url, tmp_path):
    """SIGKILL every trial's worker process after its first epoch: Tune restarts each trial
    (FailureConfig), training continues after the checkpointed epoch, and the sweep completes."""
    epochs = 4
    sweep = SweepConfig(num_samples=2, grace_period=epochs)  # no ASHA stops: every trial runs on
    storage = resolve(str(tmp_path / "sweep"))
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    outcome: dict = {}

    def sweep_in_background() -> None:
        try:
            outcome["result"] = run_sweep(
                tensors_url,
                [("scratch_cnn", "full")],
                {"epochs": epochs, "weights": "none", "seed": 0},
                sweep,
                storage.url,
            )
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    try:
        driver = threading.Thread(target=sweep_in_background)
        driver.start()
        checkpoints = f"{storage.path}/sweep-trial-checkpoints/*.pt"
        _wait_for(lambda: len(storage.fs.glob(checkpoints)) == 2, 180, "both trials' epoch 1")
        victims = actor_pids("ImplicitFunc")
        assert len(victims) == 2, victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed = time.perf_counter()
        driver.join(timeout=300)
        recovery = time.perf_counter() - killed
        assert not driver.is_alive(), "the sweep did not finish after its workers were killed"
    finally:
        ray.shutdown()
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    assert [(t["error"], t["epochs_run"]) for t in result["trials"]] == [(None, epochs)] * 2
    assert set(result["best"]) == {"scratch_cnn/full"}
    analysis = tune.ExperimentAnalysis(storage.join("sweep").path)
    assert [t.num_failures for t in analysis.trials] == [1, 1]  # each killed once, restarted
    for frame in analysis.trial_dataframes.values():  # epoch 1 came from the checkpoint
        assert frame["epoch"].tolist() == list(range(1, epochs + 1))
    _record("worker-loss", outcome="recovered", trials=2, recovery_s=round(recovery, 1))
