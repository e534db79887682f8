"""The Ray Tune sweep on real local Ray: per-epoch reports, ASHA stopping, best per pair,
and resuming a finished sweep from its storage, locally and on a real S3-compatible server."""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from pydantic import ValidationError

from braintl import trialtable
from braintl.storage import resolve
from braintl.training import pause
from braintl.trialtable import Report, TrialTable
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
    table = resolve(first["trials_url"])
    before = table.read_bytes()
    started = time.perf_counter()
    again = run_sweep(tensors_url, PAIRS, BASE, SWEEP, storage, name="sweep")
    assert again["restored"]
    assert again["trials"] == first["trials"]
    assert again["best"] == first["best"]
    assert table.read_bytes() == before  # no trial ran or reported anything new
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
    """The trial table and checkpoints go to the bucket, Tune's pickled state never does;
    a rerun restores from the table."""
    storage = f"{s3_bucket}/runs/r1/sweep"
    pairs, sweep = PAIRS[:1], SweepConfig(num_samples=1)
    result = run_sweep(tensors_url, pairs, {**BASE, "epochs": 2}, sweep, storage, name="s3sweep")
    assert [(t["error"], t["epochs_run"]) for t in result["trials"]] == [(None, 2)]
    assert result["trials_url"].startswith("s3://")
    folder = resolve(storage)
    assert [p.rsplit("/", 1)[-1] for p in folder.fs.find(folder.path)] == ["s3sweep-trials.json"]
    again = run_sweep(tensors_url, pairs, {**BASE, "epochs": 2}, sweep, storage, name="s3sweep")
    assert again["restored"] and again["trials"] == result["trials"]


KILLED_SWEEP = """
import sys
from braintl.tuning import SweepConfig, run_sweep
run_sweep(sys.argv[1], [("scratch_cnn", "full")], {"epochs": 3, "weights": "none"},
          SweepConfig(num_samples=1), sys.argv[2])
"""


def test_interrupted_sweep_resumes_trials_from_their_checkpoints(local_ray, tensors_url, tmp_path):
    """Kill a sweep's driver (and with it its Ray) mid-trial; the rerun rebuilds the sweep from
    its trial table and the interrupted trials continue from their per-epoch checkpoints. The
    trial holds after epoch 1's checkpoint (:mod:`braintl.training.pause`) until the kill, on
    any CPU."""
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
        state = storage.join("sweep-trials.json").exists()
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
    table = trialtable.read(storage.join("sweep-trials.json"))
    resumed = [r.epoch for r in table.trials[trial["trial_id"]].reports if r.attempt == 2]
    assert resumed == [2, 3], table  # only the epochs after the checkpoint


class _Planted:
    """A pickle that makes a folder when loaded: proof that code from storage ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# What Tune's restore reads (Tuner.restore, its searcher and trials, ResultGrid's errors).
TUNE_STATE = (
    "tuner.pkl",
    "trainable.pkl",
    "experiment_state-2026-01-01_00-00-00.json",
    "basic-variant-state-2026-01-01_00-00-00.json",
    "searcher-state-2026-01-01_00-00-00.pkl",
    "trial_0/params.pkl",
    "trial_0/error.pkl",
    "trial_0/result.json",
    "trial_0/checkpoint_000000/data.pkl",
)


@pytest.mark.slow
def test_resume_never_unpickles_planted_state(local_ray, tensors_url, tmp_path, caplog):
    """A bucket writer plants pickles that run code when loaded in every file a restore could
    read (Tune's experiment state and the checkpoint of the trial a crash left running, which
    the rerun resumes): no code runs, the planted checkpoint is refused as the trial's error,
    the finished trial is kept and the log says Tune's state is ignored."""
    storage = resolve(str(tmp_path / "storage"))
    pairs, sweep = [("scratch_cnn", "full")], SweepConfig(num_samples=2, max_failures=0)
    base = {"epochs": 1, "weights": "none", "seed": 0}
    victim, other = plan = sweep.plan(pairs, base["seed"])
    table = TrialTable.new(plan)  # as a crash leaves it: one trial finished, one running
    table.trials[other].status, table.trials[victim].status = "finished", "running"
    table.trials[other].reports.append(
        Report(epoch=1, val_auc=0.75, val_loss=0.6, train_loss=0.7, attempt=1)
    )
    table.write(storage.join("sweep-trials.json"))
    pickle.loads(pickle.dumps(_Planted(tmp_path / "sanity")))
    assert (tmp_path / "sanity").exists()  # the payload does run when unpickled
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(_Planted(marker))
    as_json = json.dumps({"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}).encode()
    for name in TUNE_STATE:
        storage.join("sweep", name).write_bytes(as_json if name.endswith(".json") else payload)
    storage.join("sweep-trial-checkpoints", f"{victim}.pt").write_bytes(payload)

    with caplog.at_level(logging.INFO, logger="braintl.tuning"):
        again = run_sweep(tensors_url, pairs, base, sweep, storage.url)
    assert not marker.exists()
    assert again["restored"]
    trials = {t["trial_id"]: t for t in again["trials"]}
    assert "not a weights-only braintl checkpoint" in trials[victim]["error"], trials[victim]
    assert (trials[other]["error"], trials[other]["best_val_auc"]) == (None, 0.75)  # kept
    assert "Ray Tune state there is ignored, never restored" in caplog.text
    assert "resuming 1 of 2 trials" in caplog.text


def test_a_table_braintl_did_not_write_is_ignored(tmp_path, caplog):
    table = resolve(str(tmp_path / "sweep-trials.json"))
    table.write_bytes(b'{"format": "braintl-sweep-trials/1", "plan": {}, "trials": 1}')
    with caplog.at_level(logging.WARNING):
        assert trialtable.read(table) is None
    assert "not a braintl trial table" in caplog.text and "starts over" in caplog.text


def test_trial_table_saves_progress_at_most_once_per_interval_and_ends_at_once(tmp_path):
    """The table is rewritten whole; saving it at every epoch report made a sweep's writes
    grow with trials²: reports are held back up to the interval, ends are never held back."""
    from types import SimpleNamespace

    from braintl.tuning import _TableWriter

    where = resolve(str(tmp_path / "sweep-trials.json"))
    table = TrialTable.new({"a": {"model": "scratch_cnn/full"}, "b": {"model": "vgg16/frozen"}})
    writer = _TableWriter(table, where, notify=None, interval_s=0.3)
    a, b = (SimpleNamespace(config={"trial": t}) for t in "ab")

    def saved() -> TrialTable:
        return trialtable.read(where)

    writer.on_trial_start(0, [], a)  # the first event is saved
    writer.on_trial_start(0, [], b)
    writer.on_trial_result(0, [], a, {"epoch": 1, "val_auc": 0.6})
    writer.on_step_end(0, [])
    assert saved().trials["b"].status == "pending" and saved().trials["a"].reports == []

    time.sleep(0.35)
    writer.on_step_end(0, [])  # held-back progress goes out once the interval has passed
    assert saved().trials["b"].status == "running"
    assert [r.epoch for r in saved().trials["a"].reports] == [1]

    writer.on_trial_result(0, [], b, {"epoch": 1, "val_auc": 0.7})
    writer.on_trial_complete(0, [], a)  # an end is saved at once, as its own journal entry
    assert saved().trials["a"].status == "finished"
    assert saved().trials["b"].reports == []  # progress still waits for the interval


@pytest.fixture(params=["local", "s3"])
def table_url(request, tmp_path):
    """Where a trial table goes: a local folder, or a bucket on the real S3 server."""
    if request.param == "local":
        return str(tmp_path / "sweep-trials.json")
    return f"{request.getfixturevalue('s3_bucket')}/sweep/sweep-trials.json"


def _writer(n: int, url: str):
    """A table of ``n`` trials and its writer, whose first event writes the whole table and
    whose next is an hour away."""
    from types import SimpleNamespace

    from braintl.tuning import _TableWriter

    table = TrialTable.new({f"t{i:04d}": {"model": "scratch_cnn/full"} for i in range(n)})
    writer = _TableWriter(table, resolve(url), notify=None, interval_s=3600)
    return writer, SimpleNamespace(config={"trial": "t0000"})


def _objects(url: str) -> dict[str, bytes]:
    folder = resolve(url).parent
    return {p: folder.fs.cat_file(p) for p in folder.fs.find(folder.path)}


def test_a_trial_end_survives_a_crash_before_the_table_is_written(table_url):
    """The table's throttle is not due when the trial ends: a resume reading storage right
    then still sees it finished, and does not run it again."""
    writer, trial = _writer(3, table_url)
    writer.on_trial_start(0, [], trial)  # the whole table, once
    writer.on_trial_result(0, [], trial, {"epoch": 1, "val_auc": 0.6})
    writer.on_trial_complete(0, [], trial)
    where = resolve(table_url)
    assert json.loads(where.read_bytes())["trials"]["t0000"]["status"] == "running"  # stale
    after_crash = trialtable.read(where)
    assert after_crash.trials["t0000"].status == "finished"
    assert [r.epoch for r in after_crash.trials["t0000"].reports] == [1]
    assert after_crash.unfinished() == ["t0001", "t0002"]

    after_crash.settle(where)  # the sweep's end: the table alone, no journal left
    assert list(_objects(table_url)) == [where.path]
    assert trialtable.read(where).trials["t0000"].status == "finished"


def test_bytes_written_per_trial_end_do_not_grow_with_trials(table_url):
    """Counted from storage: a trial's end writes its journal entry alone, the same object at
    10 trials as at 1 000, and leaves the whole table as it was."""
    written = {}
    for n in (10, 1000):
        url = table_url.replace("sweep-trials", f"sweep-{n}-trials")
        writer, trial = _writer(n, url)
        writer.on_trial_start(0, [], trial)
        writer.on_trial_result(0, [], trial, {"epoch": 1, "val_auc": 0.6})
        before = _objects(url)
        writer.on_trial_complete(0, [], trial)
        after = _objects(url)
        [changed] = [p for p in after if after[p] != before.get(p)]
        assert changed.endswith(f"sweep-{n}-trials.json.journal/t0000.json")
        written[n] = len(after[changed])
    assert written[10] == written[1000] < 1000, written


def test_a_journal_entry_braintl_did_not_write_is_ignored(tmp_path, caplog):
    """A malformed entry or one for a trial not in the plan is skipped with a warning; of an
    entry and the table's copy, the one with more changes recorded wins."""
    where = resolve(str(tmp_path / "sweep-trials.json"))
    table = TrialTable.new({t: {"model": "scratch_cnn/full"} for t in ("a", "b", "c")})
    table.trials["c"] = trialtable.Trial(status="running", version=5)
    table.write(where)
    table.trials["b"] = trialtable.Trial(status="finished", version=2)
    table.trials["c"] = trialtable.Trial(status="error", error="lost", version=3)
    for trial_id in ("b", "c"):
        table.write_trial(where, trial_id)
    entries = trialtable.journal(where)
    entries.join("a.json").write_bytes(b'{"format": "braintl-sweep-trial/1", "trial": 1}')
    entries.join("planted.json").write_bytes(entries.join("b.json").read_bytes())
    entries.join(".a.json.x1.tmp").write_bytes(b"{")  # a local write a crash cut short
    with caplog.at_level(logging.WARNING):
        read = trialtable.read(where)
    assert {i: t.status for i, t in read.trials.items()} == {
        "a": "pending",  # malformed: ignored
        "b": "finished",  # the journal's, newer
        "c": "running",  # the table's, newer
    }
    assert "a.json: not a braintl journal entry" in caplog.text
    assert "no trial 'planted' in the table's plan" in caplog.text
    assert ".tmp" not in caplog.text


def test_a_journal_of_unfinished_writes_only_is_no_entry(tmp_path):
    where = resolve(str(tmp_path / "sweep-trials.json"))
    TrialTable.new({"a": {"model": "scratch_cnn/full"}}).write(where)
    trialtable.journal(where).join(".a.json.x1.tmp").write_bytes(b"{")
    assert trialtable.read(where).trials["a"].status == "pending"


def test_a_failed_journal_write_is_retried_without_ending_the_sweep(tmp_path, caplog):
    """The journal's folder cannot be made (a file holds its name) when a trial ends: the end
    is logged as not saved, and the next write of the whole table, once due, holds it."""
    url = str(tmp_path / "sweep-trials.json")
    writer, trial = _writer(2, url)
    writer.on_trial_start(0, [], trial)
    (tmp_path / "sweep-trials.json.journal").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        writer.on_trial_complete(0, [], trial)
    assert "trial t0000's entry not saved, retried with the table" in caplog.text
    assert trialtable.read(resolve(url)).trials["t0000"].status == "running"
    writer.interval_s = 0  # the table's next write is due
    writer.on_step_end(0, [])
    assert trialtable.read(resolve(url)).trials["t0000"].status == "finished"
