"""Reliability with real processes and servers on 127.0.0.1: a Ray worker killed mid-trial, the
flow process killed mid-sweep and rerun, the S3 endpoint going away, two runs at once, and
cross-validation through an outage, a lost fold worker and a hung fold.

Each scenario appends what it measured (recovered or failed, seconds) to
``$BRAINTL_TEST_ARTIFACTS/reliability.jsonl`` (default ``<repo>/test-artifacts/``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import s3fs
import torch
from artifacts import artifacts_dir
from faults import TcpProxy, actor_pids
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect_services import api_client, start_prefect_server

from braintl import runlease, trialtable
from braintl.results import PARTS
from braintl.storage import resolve
from braintl.timeouts import Timeouts
from braintl.training import pause
from braintl.tuning import SweepConfig, run_sweep
from flows.params import RetrainParams
from flows.retrain import output_limit, retrain
from tasks.results_storage import RESULTS_DIR

REPO = Path(__file__).resolve().parents[1]


def _record(scenario: str, **figures) -> None:
    """Keep what a scenario measured, for the issue's note; printed too (``pytest -s``)."""
    line = json.dumps({"scenario": scenario, **figures})
    with (artifacts_dir() / "reliability.jsonl").open("a") as fh:
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
def test_killed_ray_worker_retries_its_trial_from_the_checkpoint(
    tensors_url, tmp_path, monkeypatch
):
    """SIGKILL every trial's worker process after its first epoch: Tune restarts each trial
    (FailureConfig), training continues after the checkpointed epoch, and the sweep completes.

    Each trial holds right after checkpointing epoch 1 (:mod:`braintl.training.pause`) until the
    test has killed it, so there is a worker alive to kill on any CPU, however fast its epochs."""
    epochs, samples = 4, 2
    sweep = SweepConfig(num_samples=samples, grace_period=epochs)  # no ASHA stops
    storage = resolve(str(tmp_path / "sweep"))
    gate = tmp_path / "gate"
    monkeypatch.setenv(pause.PAUSE_ENV, f"1:{gate}")  # before ray.init: the workers inherit it
    ray.shutdown()
    ray.init(num_cpus=samples, include_dashboard=False, log_to_driver=False)
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
        # One CPU a trial: both trials run at once, and both hold after epoch 1.
        victims = _wait_for(lambda: _paused(gate, samples), 300, "both trials' epoch 1")
        assert set(victims) <= set(actor_pids("ImplicitFunc")), "paused trials are Tune's actors"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed = time.perf_counter()
        (gate / pause.RELEASE).touch()  # nothing holds the restarted trials
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
    table = trialtable.read(storage.join("sweep-trials.json"))
    assert [t.restarts for t in table.trials.values()] == [1] * samples  # each restarted once
    for trial in table.trials.values():
        # Killed after epoch 1 was checkpointed: the new worker goes on with epoch 2.
        assert [r.epoch for r in trial.reports] == list(range(1, epochs + 1))
    _record("worker-loss", outcome="recovered", killed=len(victims), recovery_s=round(recovery, 1))


def _paused(gate: Path, count: int) -> list[int] | None:
    """Process ids of the runs holding at the pause point, once there are ``count``."""
    pids = [int(p.name.removeprefix("paused-")) for p in gate.glob("paused-*")]
    return pids if len(pids) == count else None


TINY = {
    "backbones": ["scratch_cnn"],
    "image_size": 32,
    "epochs": 2,
    "folds": 3,
    "sweep": {"num_samples": 1},
}


# The request that cuts the endpoint: the flow's first write of results.json.
RESULTS_PUT = b"/results.json HTTP/1.1"


def _run_counts(state) -> dict[str, int]:
    """Task run name (less Prefect's random suffix; sweeps and folds are named) → highest
    number of attempts."""
    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=flow_run)
    counts: dict[str, int] = {}
    for run in runs:
        named = run.name.startswith(("cv-", "sweep-"))
        name = run.name if named else run.name.rsplit("-", 1)[0]
        counts[name] = max(counts.get(name, 0), run.run_count)
    return counts


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_storage_outage_retries_then_fails_cleanly(s3_server, s3_bucket, monkeypatch):
    """The S3 endpoint vanishes as the results are written: back after some seconds, the
    storage tasks retry and the run completes; never back, the run fails naming the problem,
    ``latest.json`` still names the first run and the failed run has no completion marker."""
    proxy = TcpProxy(int(s3_server.rsplit(":", 1)[1]))
    gone = TcpProxy(proxy.target_port)  # the never-back part's endpoint
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # the flow and its Ray workers go through it
    direct = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    bucket = s3_bucket.removeprefix("s3://")
    params = RetrainParams(out_url=s3_bucket, **TINY)
    ray.shutdown()
    try:
        proxy.cut_on(RESULTS_PUT, outage=8)
        state = retrain(params, return_state=True)
        finished = time.perf_counter()
        assert state.is_completed(), state.message
        first = state.result()
        assert proxy.times["restored"] - proxy.times["cut"] >= 8
        # Who rode out the outage depends on timing: botocore's own retries, or a task retry.
        retried = {k: n for k, n in _run_counts(state).items() if n > 1}
        latest = json.loads(direct.cat_file(f"{bucket}/latest.json"))
        assert latest["run_id"] == first["run_id"]
        assert direct.exists(f"{bucket}/runs/{first['run_id']}/_COMPLETE.json")
        _record(
            "storage-outage-8s",
            outcome="recovered",
            retried_tasks=retried,
            recovery_s=round(finished - proxy.times["restored"], 1),
        )

        # Never back, through a second endpoint: fsspec keeps one client per endpoint, so the
        # flow's new clients (and Ray's new workers) read botocore's attempts set to one. Its
        # default five attempts a call against a refused port (5-7 s a call) only lengthen the
        # wait; what this part checks is that the storage tasks' own retries end cleanly.
        ray.shutdown()
        monkeypatch.setenv("AWS_ENDPOINT_URL", gone.url)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        gone.cut_on(RESULTS_PUT, outage=None)
        failed = retrain(params.model_copy(update={"force": True}), return_state=True)
        gave_up = time.perf_counter() - gone.times["cut"]
    finally:
        proxy.close()
        gone.close()
        ray.shutdown()
    assert failed.is_failed()
    assert "storage unreachable" in failed.message and "AWS_ENDPOINT_URL" in failed.message
    assert json.loads(direct.cat_file(f"{bucket}/latest.json")) == latest
    runs = {p.rsplit("/", 1)[-1] for p in direct.ls(f"{bucket}/runs")} - {first["run_id"]}
    assert len(runs) == 1
    assert not direct.exists(f"{bucket}/runs/{runs.pop()}/_COMPLETE.json")
    _record("storage-outage-permanent", outcome="failed cleanly", failed_after_s=round(gave_up, 1))


# `braintl run` options of the process scenarios: one trial of three epochs, so a kill after
# the first epoch lands mid-sweep.
# -v: the assertions read Prefect's task-state log lines, otherwise kept off the terminal.
RUN_OPTIONS = (
    "--backbones", "scratch_cnn", "--image-size", "32", "--epochs", "3", "--folds", "3",
    "--num-samples", "1", "--json", "-v",
)  # fmt: skip
LEASE_S = 15  # a run's lease in these processes: a killed run is resumable this long after


@pytest.fixture(scope="module")
def prefect_with_services(tmp_path_factory):
    """A `prefect server start` for the ``braintl run`` processes: unlike the test harness's
    ephemeral server it runs Prefect's services, whose repossessor hands a killed flow run's
    concurrency slot on (checked every second here) once its lease expired."""
    home = tmp_path_factory.mktemp("prefect-services")
    settings = {"PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1"}
    with start_prefect_server(home, **settings) as env:
        yield env["PREFECT_API_URL"]


def _start_run(
    out: Path | str,
    home: Path,
    api_url: str | None,
    *extra: str,
    pause_at: Path | None = None,
    pause_only: str = "",
) -> tuple[subprocess.Popen, Path]:
    """``braintl run`` in its own process group, against the test's Prefect server (None: a
    temporary server of its own, in its home), with its own PREFECT_HOME and a run lease of
    LEASE_S seconds; with ``pause_at``, its training (only runs whose checkpoint URL contains
    ``pause_only``) holds after epoch 1's checkpoint until the test releases it
    (:mod:`braintl.training.pause`)."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"run-{len(list(home.glob('run-*.log')))}.log"
    env = {
        **{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
        "PREFECT_HOME": str(home),
        runlease.SECONDS_ENV: str(LEASE_S),
    }
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    else:  # Prefect's 20 s are too short on a busy CI machine
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    if pause_at is not None:
        env |= {pause.PAUSE_ENV: f"1:{pause_at}", pause.ONLY_ENV: pause_only}
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [Path(sys.executable).with_name("braintl"), "run", "--out", str(out), *RUN_OPTIONS]
            + list(extra),
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, log


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    """Wait for a run; its output, or a failure that shows it. Whatever the run left behind in
    its process group (a temporary Prefect server whose start timed out, Ray) ends with it."""
    try:
        proc.wait(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):  # nothing left
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def _scores(run_dir: Path) -> dict:
    """What a run computed, less where and when: per model its config and every fold's scores."""
    results = json.loads((run_dir / "results.json").read_text())
    return {
        m["model"]: {
            "config": m["config"],
            "scores": {part: {k: v["values"] for k, v in m[part].items()} for part in PARTS},
            "thresholds": [r["threshold"] for r in m["runs"]],
        }
        for m in results["models"]
    }


def _sweep(run_dir: Path) -> dict:
    return json.loads((run_dir / "sweep.json").read_text())["random-init"]


@pytest.fixture(scope="module")
def concurrent_runs(prefect_with_services, tmp_path_factory):
    """Two ``braintl run`` processes with the same settings started at once on one output
    folder: they take turns on the output's concurrency limit, so the later one finds the
    first's results in latest.json and ends "Nothing changed"."""
    root = tmp_path_factory.mktemp("concurrent")
    out = root / "out"
    started = time.perf_counter()
    runs = [
        _start_run(out, root / "home-a", prefect_with_services),
        _start_run(out, root / "home-b", prefect_with_services),
    ]
    outputs = [_finish(proc, log) for proc, log in runs]
    return out, outputs, time.perf_counter() - started, prefect_with_services


def _outcome(output: str) -> dict:
    """The JSON object ``braintl run --json`` prints last."""
    return json.loads(output[output.rindex("\n{") :])


@pytest.mark.slow
def test_two_runs_at_once_on_one_output_take_turns(concurrent_runs):
    out, outputs, seconds, api_url = concurrent_runs
    outcomes = sorted((_outcome(text) for text in outputs), key=lambda o: o["state"])
    assert [o["state"] for o in outcomes] == ["Completed", "Nothing changed"]
    assert outcomes[0]["run_id"] == outcomes[1]["run_id"]
    [run_dir] = (out / "runs").iterdir()  # one run id, one run
    assert (run_dir / "_COMPLETE.json").exists()
    assert json.loads((run_dir / "config.json").read_text())["run_id"] == run_dir.name
    assert not (run_dir / runlease.LEASE).exists()  # released when the flow ended
    assert _sweep(run_dir)["trials"]
    for fold in (1, 2):  # fold 0 tunes
        metrics = run_dir / "folds" / "scratch_cnn-full" / f"fold-{fold}" / "metrics.json"
        assert json.loads(metrics.read_text())["fold"] == fold
    assert json.loads((out / "latest.json").read_text())["run_id"] == run_dir.name
    with api_client(api_url) as client:
        limit = client.read_global_concurrency_limit_by_name(output_limit(str(out)))
    assert (limit.limit, limit.active_slots) == (1, 0)
    _record("concurrent-runs", outcome="took turns", seconds=round(seconds, 1))


@pytest.mark.slow
def test_killed_flow_process_resumes_and_matches_an_uninterrupted_run(concurrent_runs, tmp_path):
    """SIGKILL ``braintl run`` (and the Ray it started) after the sweep's first epoch; the rerun
    takes prepare from the cache, restores the sweep, completes the same run, and scores
    exactly as the uninterrupted run with the same settings and seed. The killed run's slot of
    the output's concurrency limit lapses too (a 60 s lease): the rerun waits for it."""
    reference_out, _, _, api_url = concurrent_runs
    out, home = tmp_path / "out", tmp_path / "prefect-home"
    gate = tmp_path / "gate"
    proc, log = _start_run(out, home, api_url, pause_at=gate)
    try:  # the sweep's trial holds after epoch 1's checkpoint until killed
        _wait_for(lambda: _paused(gate, 1) or proc.poll() is not None, 600, "the sweep's epoch 1")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-4000:]
    [run_dir] = (out / "runs").iterdir()
    assert not (run_dir / "_COMPLETE.json").exists() and not (out / "latest.json").exists()
    lease = json.loads((run_dir / runlease.LEASE).read_text())  # a dead process's lease ...
    time.sleep(max(0.0, lease["until"] - time.time()))  # ... expires; then the run is resumable

    started = time.perf_counter()
    text = _finish(*_start_run(out, home, api_url))
    seconds = time.perf_counter() - started
    assert f"resuming interrupted run {run_dir.name}" in text
    assert re.search(r"prepare-\w+' - Finished in state Cached", text), text[-4000:]
    assert _sweep(run_dir)["restored"]
    assert json.loads((out / "latest.json").read_text())["run_id"] == run_dir.name
    assert (run_dir / "_COMPLETE.json").exists()
    reference = json.loads((reference_out / "latest.json").read_text())
    assert _scores(run_dir) == _scores(Path(reference["run_url"]))
    ours, theirs = (_sweep(d) for d in (run_dir, Path(reference["run_url"])))
    assert ours["best"] == theirs["best"]
    [trial], [other] = ours["trials"], theirs["trials"]
    _record(
        "flow-process-killed",
        outcome="resumed",
        rerun_s=round(seconds, 1),
        sweep_trial_differs={k: [v, other[k]] for k, v in trial.items() if other[k] != v},
    )


def _stored_results(bucket) -> dict[str, dict]:
    """The cached stages' records under ``OUT/.prefect``, by file name; each must be JSON, its
    result JSON-serialised (no pickle), or this fails."""
    records = {}
    bucket.fs.invalidate_cache()  # another process writes them
    for path in bucket.fs.find(bucket.join(RESULTS_DIR).path):
        record = json.loads(bucket.fs.cat_file(path))
        assert record["metadata"]["serializer"]["type"] == "json", record["metadata"]
        records[path.rsplit("/", 1)[-1]] = json.loads(record["result"])
    return records


def _modified(location) -> str:
    return str(location.fs.info(location.path)["LastModified"])


@pytest.mark.slow
def test_a_run_killed_in_one_process_resumes_in_another_from_the_shared_results(
    s3_server, s3_bucket, tmp_path
):
    """``braintl run`` on S3 is SIGKILLed once prepare, the sweep and fold 1 finished (fold 2
    holds after its first epoch). Another process, with another Prefect home, server and local
    disk, resumes the run: prepare, the sweep and fold 1 come from the results under
    ``OUT/.prefect`` (Cached, their files untouched), only fold 2 trains; every stored result
    is JSON, and neither process kept a result on its own disk."""
    bucket = resolve(s3_bucket)
    gate, homes = tmp_path / "gate", [tmp_path / "home-a", tmp_path / "home-b"]
    proc, log = _start_run(s3_bucket, homes[0], None, pause_at=gate, pause_only="/fold-2/")
    try:  # prepare + sweep + fold 1 stored, fold 2 held: three records
        _wait_for(
            lambda: (
                proc.poll() is not None or (_paused(gate, 1) and len(_stored_results(bucket)) == 3)
            ),
            600,
            "prepare, the sweep and fold 1 stored, fold 2 held",
            interval=1,
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-4000:]
    [run_id] = [p.rsplit("/", 1)[-1] for p in bucket.fs.ls(bucket.join("runs").path)]
    run = bucket.join("runs", run_id)
    assert not run.is_complete() and not bucket.join("latest.json").exists()
    before = _stored_results(bucket)
    fold1 = run.join(FOLDS_DIR, "fold-1", "metrics.json")
    trained = _modified(fold1)
    time.sleep(max(0.0, run.join(runlease.LEASE).read_json()["until"] - time.time()))

    started = time.perf_counter()
    text = _finish(*_start_run(s3_bucket, homes[1], None))
    seconds = time.perf_counter() - started
    assert f"resuming interrupted run {run_id}" in text
    for stage in (r"prepare-\w+", "sweep-random-init", "cv-scratch_cnn-full-fold-1"):
        assert re.search(rf"{stage}' - Finished in state Cached", text), (stage, text[-4000:])
    assert re.search(r"cv-scratch_cnn-full-fold-2' - Finished in state Completed", text)
    assert _modified(fold1) == trained  # fold 1 not trained again
    after = _stored_results(bucket)
    assert len(after) == 4 and all(after[name] == result for name, result in before.items())
    assert bucket.join("latest.json").read_json()["run_id"] == run_id and run.is_complete()
    assert not [p for home in homes for p in (home / "storage").rglob("*") if p.is_file()]
    _record(
        "resumed-in-another-process",
        outcome="prepare, sweep and fold 1 cached; fold 2 trained",
        rerun_s=round(seconds, 1),
    )


def test_a_lease_holds_until_released_or_expired(tmp_path, monkeypatch):
    """While held (and renewed) a run is taken; released or lapsed, a rerun may resume it."""
    run = resolve(str(tmp_path / "run"))
    # A lease is time by nature; the margin is what matters. Renewed every 0.75 s, a 3 s lease
    # lapses only if the renewing thread stalls for 2.25 s (the old 0.4 s lease: 0.3 s, which
    # a loaded 2-core machine can reach).
    monkeypatch.setenv(runlease.SECONDS_ENV, "3")
    runlease.hold(run.url, owner="a")
    first_expiry = run.join(runlease.LEASE).read_json()["until"]
    time.sleep(max(0.0, first_expiry - time.time()) + 0.5)  # past it: only renewals keep it
    assert runlease.holder(run) == "a"
    runlease.release("a")
    assert runlease.holder(run) is None and not run.join(runlease.LEASE).exists()
    run.join(runlease.LEASE).write_json({"owner": "crashed", "until": time.time() - 1})
    assert runlease.holder(run) is None


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_hung_sweep_times_out_cleanly_and_the_next_run_resumes(tmp_path, monkeypatch):
    """The sweep's trial holds after epoch 1 and never goes on: with a 90 s sweep timeout (time
    for Ray and the trial to reach the hold on a busy machine) the run fails naming the stage
    and the setting, its lease is released and neither latest.json nor champion.json is
    written; the next run resumes that run and completes, and both name it."""
    out = tmp_path / "out"
    params = RetrainParams(out_url=str(out), **TINY)
    hold = tmp_path / "hold"
    ray.shutdown()  # the flow starts Ray again: its workers inherit the hold
    monkeypatch.setenv(pause.PAUSE_ENV, f"1:{hold}")
    monkeypatch.setenv(pause.ONLY_ENV, "/sweep/")
    started = time.perf_counter()
    hung = retrain(params.model_copy(update={"timeouts": Timeouts(sweep_s=90)}), return_state=True)
    timed_out_s = time.perf_counter() - started
    assert hung.is_failed()
    assert "sweep timed out: sweep random-init" in hung.message, hung.message
    assert "timeouts.sweep_s" in hung.message
    assert _paused(hold, 1), "the trial never reached the hold: slow, not hung; raise the timeout"
    [run_dir] = (out / "runs").iterdir()
    assert not (run_dir / runlease.LEASE).exists() and not (run_dir / "_COMPLETE.json").exists()
    assert not (out / "latest.json").exists() and not (out / "champion.json").exists()
    _record(
        "hung-sweep-timeout-90s", outcome="failed cleanly", failed_after_s=round(timed_out_s, 1)
    )

    ray.shutdown()  # as the failed flow run's process exits: the held trial ends with it
    monkeypatch.delenv(pause.PAUSE_ENV)
    started = time.perf_counter()
    resumed = retrain(params, return_state=True)
    assert resumed.is_completed(), resumed.message
    assert resumed.result()["run_id"] == run_dir.name
    for pointer in ("latest.json", "champion.json"):
        assert json.loads((out / pointer).read_text())["run_id"] == run_dir.name
    _record(
        "after-hung-sweep",
        outcome="next run resumed and completed",
        sweep_restored=_sweep(run_dir)["restored"],
        seconds=round(time.perf_counter() - started, 1),
    )


# Cross-validation faults: three epochs, so a fold held after epoch 2 still has one to train.
FOLD_FAULTS = {**TINY, "epochs": 3}
FOLDS_DIR = "folds/scratch_cnn-full"


def _hold_folds(monkeypatch, epoch: int, gate: Path) -> None:
    """Fold trainings (not the sweep's trials) hold after ``epoch``'s checkpoint until the gate
    is released; Ray restarts, so that its workers inherit the setting."""
    ray.shutdown()
    monkeypatch.setenv(pause.PAUSE_ENV, f"{epoch}:{gate}")
    monkeypatch.setenv(pause.ONLY_ENV, "/folds/")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


def _history(loc) -> list[dict]:
    """The per-epoch records of a fold checkpoint or metrics file on storage."""
    if loc.path.endswith(".json"):
        return loc.read_json()["history"]
    payload = torch.load(io.BytesIO(loc.read_bytes()), map_location="cpu", weights_only=True)
    return payload["state"]["history"]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_cross_validation_survives_an_outage_a_lost_worker_and_a_hung_fold(
    s3_server, s3_bucket, tmp_path, monkeypatch
):
    """On one S3 bucket, three runs of the same settings:

    1. the endpoint vanishes for 20 s as fold 1 writes its metrics: longer than botocore's own
       retries, so the fold task retries (its checkpoint kept) and the run completes;
    2. forced again, both folds hold after epoch 1 and never go on: with a 45 s
       cross-validation timeout the run fails naming the stage and the setting, the held
       workers are cancelled (killed), the lease is released and latest.json is unchanged;
    3. the next run resumes that run; its folds continue from epoch 1, hold after epoch 2 and
       their Ray workers are SIGKILLed there: Ray reruns them from the epoch-2 checkpoint, the
       run completes and latest.json moves to it.
    """
    bucket = resolve(s3_bucket)
    latest = bucket.join("latest.json")
    proxy = TcpProxy(int(s3_server.rsplit(":", 1)[1]))
    params = RetrainParams(out_url=s3_bucket, **FOLD_FAULTS)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # the flow and its Ray workers
        ray.shutdown()
        proxy.cut_on(b"/fold-1/metrics.json HTTP/1.1", outage=20)
        survived = retrain(params, return_state=True)
        assert survived.is_completed(), survived.message
        assert proxy.times["restored"] - proxy.times["cut"] >= 20
        recovered_s = time.perf_counter() - proxy.times["restored"]
    finally:
        proxy.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    first = survived.result()
    counts = _run_counts(survived)
    assert counts["cv-scratch_cnn-full-fold-1"] >= 2, counts  # the task retried, not botocore
    assert latest.read_json()["run_id"] == first["run_id"]
    fold0 = resolve(first["run_url"]).join(FOLDS_DIR, "fold-1")
    assert [r["epoch"] for r in _history(fold0.join("metrics.json"))] == [1, 2, 3]
    assert not fold0.join("checkpoint.pt").exists()  # removed once the results were stored
    _record(
        "fold-storage-outage-20s",
        outcome="recovered",
        fold_attempts=counts["cv-scratch_cnn-full-fold-1"],
        recovered_after_restore_s=round(recovered_s, 1),
    )

    hold = tmp_path / "hold"
    _hold_folds(monkeypatch, 1, hold)  # never released
    forced = {"force": True, "timeouts": Timeouts(cross_validation_s=45)}
    started = time.perf_counter()
    hung = retrain(params.model_copy(update=forced), return_state=True)
    timed_out_s = time.perf_counter() - started
    assert hung.is_failed()
    assert "cross-validation timed out" in hung.message, hung.message
    assert "timeouts.cross_validation_s" in hung.message
    held = _paused(hold, 2)
    assert held, "the folds never reached the hold: slow, not hung; raise the test's timeout"
    _wait_for(lambda: not any(map(_alive, held)), 30, "the held fold workers to be killed")
    assert latest.read_json() == first
    [hung_run] = {p.rsplit("/", 1)[-1] for p in bucket.fs.ls(bucket.join("runs").path)} - {
        first["run_id"]
    }
    run = bucket.join("runs", hung_run)
    assert not run.join(runlease.LEASE).exists() and not run.is_complete()
    _record("hung-fold-timeout-45s", outcome="failed cleanly", failed_after_s=round(timed_out_s, 1))

    gate = tmp_path / "gate"
    _hold_folds(monkeypatch, 2, gate)
    checkpoints: dict[int, list[dict]] = {}
    killed: list[float] = []

    def kill_held_folds() -> None:
        victims = _wait_for(lambda: _paused(gate, 2), 300, "both folds' epoch 2")
        for fold in (1, 2):
            checkpoints[fold] = _history(run.join(FOLDS_DIR, f"fold-{fold}", "checkpoint.pt"))
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed.append(time.perf_counter())
        (gate / pause.RELEASE).touch()

    killer = threading.Thread(target=kill_held_folds)
    killer.start()
    resumed = retrain(params.model_copy(update={"force": True}), return_state=True)
    finished = time.perf_counter()
    killer.join(timeout=10)
    assert resumed.is_completed(), resumed.message
    record = resumed.result()
    assert record["run_id"] == hung_run  # the timed-out run, resumed
    assert latest.read_json()["run_id"] == hung_run
    counts = _run_counts(resumed)
    attempts = [counts[f"cv-scratch_cnn-full-fold-{k}"] for k in (1, 2)]
    assert attempts == [1, 1]  # Ray reran the killed folds; the Prefect tasks never failed
    for fold in (1, 2):
        history = _history(run.join(FOLDS_DIR, f"fold-{fold}", "metrics.json"))
        # Epochs 1 and 2 are the checkpointed ones, to the float (seconds too): not retrained.
        assert [r["epoch"] for r in checkpoints[fold]] == [1, 2]
        assert history[:2] == checkpoints[fold] and history[2]["epoch"] == 3
    _record(
        "fold-worker-killed",
        outcome="resumed from checkpoint",
        killed=2,
        fold_task_attempts=attempts,
        recovery_s=round(finished - killed[0], 1),
    )
