"""The Ray Tune sweep on real local Ray: per-epoch reports, ASHA stopping, best per pair,
and resuming a finished sweep from its storage, locally and on a real S3-compatible server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import ray
from pydantic import ValidationError

from braintl.storage import resolve
from braintl.training import pause
from braintl.tuning import SweepConfig, run_sweep, trial_config

PAIRS = [("scratch_cnn", "full"), ("mobilenet_v2", "frozen")]
BASE = {"epochs": 3, "weights": "none", "seed": 0}
SWEEP = SweepConfig(num_samples=3, grace_period=1, reduction_factor=2, max_concurrent_trials=2)


@pytest.fixture(scope="module")
def local_ray(s3_server):
    """Started after the S3 fixture set the AWS variables, so Ray workers inherit them."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sweep_result(local_ray, tensors_url, tmp_path_factory):
    storage = str(tmp_path_factory.mktemp("sweep"))
    started = time.perf_counter()
    ended = []
    result = run_sweep(
        tensors_url,
        PAIRS,
        BASE,
        SWEEP,
        storage,
        name="sweep",
        on_trial_end=lambda n, total: ended.append((n, total)),
    )
    result["ended_calls"] = ended
    return storage, result, time.perf_counter() - started


def test_sweep_reports_every_epoch_and_asha_stops_some(sweep_result):
    _, result, _ = sweep_result
    trials = result["trials"]
    assert len(trials) == len(PAIRS) * SWEEP.num_samples
    assert not result["restored"]
    for trial in trials:
        assert trial["error"] is None, trial
        assert 1 <= trial["epochs_run"] <= BASE["epochs"]
        assert trial["reports"] == trial["epochs_run"]  # one report per epoch
        assert trial["stopped_early"] == (trial["epochs_run"] < BASE["epochs"])
        assert 1e-4 <= trial["lr"] <= 3e-3
        assert trial["batch_size"] in (16, 32)
    assert any(t["stopped_early"] for t in trials), trials
    assert any(t["epochs_run"] == BASE["epochs"] for t in trials)
    total = len(trials)  # progress: one call per ended trial, ASHA-stopped ones included
    assert result["ended_calls"] == [(n, total) for n in range(1, total + 1)]


def test_sweep_best_per_pair_is_a_full_training_config(sweep_result):
    _, result, _ = sweep_result
    assert set(result["best"]) == {"scratch_cnn/full", "mobilenet_v2/frozen"}
    for key, config in result["best"].items():
        backbone, strategy = key.split("/")
        assert (config["backbone"], config["strategy"]) == (backbone, strategy)
        assert config["epochs"] == BASE["epochs"]
        pair_trials = [
            t for t in result["trials"] if (t["backbone"], t["strategy"]) == (backbone, strategy)
        ]
        best_auc = max(t["best_val_auc"] for t in pair_trials if t["best_val_auc"] is not None)
        chosen = [t for t in pair_trials if t["lr"] == config["lr"]]
        assert chosen and chosen[0]["best_val_auc"] == best_auc


def test_rerun_restores_without_retraining(sweep_result, tensors_url):
    storage, first, seconds = sweep_result
    experiment = resolve(first["experiment_url"])
    before = {
        p: experiment.fs.cat_file(p) for p in experiment.fs.glob(f"{experiment.path}/*/result.json")
    }
    assert len(before) == len(first["trials"])
    started = time.perf_counter()
    again = run_sweep(tensors_url, PAIRS, BASE, SWEEP, storage, name="sweep")
    assert again["restored"]
    assert again["trials"] == first["trials"]
    assert again["best"] == first["best"]
    after = {p: experiment.fs.cat_file(p) for p in before}
    assert after == before  # no trial reported anything new
    assert time.perf_counter() - started < seconds


def test_trial_config_puts_choices_over_base():
    config = trial_config(
        {"epochs": 2, "lr": 1.0},
        {"model": "vgg16/finetune", "lr": 1e-3, "dropout": 0.3, "head_units": 64, "batch_size": 16},
    )
    assert (config.backbone, config.strategy, config.lr, config.epochs) == (
        "vgg16",
        "finetune",
        1e-3,
        2,
    )


def test_sweep_config_rejects_bad_ranges():
    with pytest.raises(ValidationError, match="lr_min"):
        SweepConfig(lr_min=1e-2, lr_max=1e-3)
    with pytest.raises(ValidationError, match="batch"):
        SweepConfig(batch_size_choices=(1,))
    with pytest.raises(ValidationError):
        SweepConfig(unknown=1)


def test_sweep_checks_every_pair_before_starting(tmp_path):
    with pytest.raises(ValidationError, match="scratch_cnn has no ImageNet weights"):
        run_sweep(
            str(tmp_path / "tensors"),
            [("vgg16", "frozen"), ("scratch_cnn", "full")],
            {"weights": "imagenet"},
            SweepConfig(),
            str(tmp_path / "sweep"),
        )
    assert not (tmp_path / "sweep").exists()


def test_sweep_on_s3(local_ray, tensors_url, s3_bucket):
    """Tune's experiment state and the trial checkpoints go to the bucket; a rerun restores."""
    storage = f"{s3_bucket}/runs/r1/sweep"
    pairs, sweep = PAIRS[:1], SweepConfig(num_samples=1)
    result = run_sweep(tensors_url, pairs, {**BASE, "epochs": 2}, sweep, storage, name="s3sweep")
    assert [(t["error"], t["epochs_run"]) for t in result["trials"]] == [(None, 2)]
    assert result["experiment_url"].startswith("s3://")
    experiment = resolve(result["experiment_url"])
    assert experiment.fs.glob(f"{experiment.path}/experiment_state*.json")
    again = run_sweep(tensors_url, pairs, {**BASE, "epochs": 2}, sweep, storage, name="s3sweep")
    assert again["restored"] and again["trials"] == result["trials"]


KILLED_SWEEP = """
import sys
from braintl.tuning import SweepConfig, run_sweep
run_sweep(sys.argv[1], [("scratch_cnn", "full")], {"epochs": 3, "weights": "none"},
          SweepConfig(num_samples=1), sys.argv[2])
"""


def test_interrupted_sweep_resumes_trials_from_their_checkpoints(local_ray, tensors_url, tmp_path):
    """Kill a sweep's driver (and with it its Ray) mid-trial; the rerun restores the experiment
    and the interrupted trials continue from their per-epoch checkpoints. The trial holds after
    epoch 1's checkpoint (:mod:`braintl.training.pause`) until the kill, on any CPU."""
    storage = resolve(str(tmp_path / "storage"))
    gate = tmp_path / "gate"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_SWEEP, tensors_url, storage.url],
        env={**os.environ, pause.PAUSE_ENV: f"1:{gate}"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        state = storage.fs.glob(f"{storage.path}/sweep/experiment_state*.json")
        if state and list(gate.glob("paused-*")):
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state and list(gate.glob("paused-*")), "the sweep did not checkpoint in time"
    result = run_sweep(
        tensors_url,
        [("scratch_cnn", "full")],
        {"epochs": 3, "weights": "none"},
        SweepConfig(num_samples=1),
        storage.url,
    )
    assert result["restored"]
    [trial] = result["trials"]
    assert (trial["error"], trial["epochs_run"]) == (None, 3)
    assert trial["reports"] == 2, trial  # epochs 2 and 3: only those after the checkpoint
