"""Runs that share one output cannot collide: atomic leases, run ids claimed under contention,
ownership checked before writing, and a ``latest.json`` that only moves forward. On a local
folder and on a real S3 server (moto's, over HTTP), with real threads and processes racing."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from concurrency import race
from faults import TcpProxy, strip_conditions

from braintl import conditional, runlease
from braintl.results import publish_latest, read_latest
from braintl.runclaim import claim_run
from braintl.storage import resolve
from tasks import results as result_tasks

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", "s3"])
def out_url(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return f"{request.getfixturevalue('s3_bucket')}/out"


def test_of_threads_racing_for_one_lease_exactly_one_wins(out_url):
    for round_ in range(10):
        run_url = resolve(out_url).join("runs", f"run-{round_}").url
        outcomes = race(6, lambda i, run_url=run_url: runlease.take(run_url, f"owner-{i}"))
        leases = [o for o in outcomes if isinstance(o, runlease.Lease)]
        assert len(leases) == 1, outcomes
        assert all(isinstance(o, runlease.LeaseHeld) for o in outcomes if o not in leases)
        held = json.loads(conditional.read(leases[0].location).data)
        assert held["owner"] == leases[0].owner


def test_only_the_owner_renews_and_a_lapsed_owner_learns_it_lost(out_url, monkeypatch):
    monkeypatch.setenv(runlease.SECONDS_ENV, "0.5")
    run_url = resolve(out_url).join("runs", "r1").url
    first = runlease.take(run_url, "first")
    with pytest.raises(runlease.LeaseHeld):
        runlease.take(run_url, "second")  # live: not to be taken
    runlease.renew(first)
    time.sleep(0.6)  # first stopped renewing (a paused process): its lease expired
    second = runlease.take(run_url, "second")
    with pytest.raises(runlease.LeaseLost, match="now held by second"):
        runlease.renew(first)
    runlease.renew(second)
    assert json.loads(conditional.read(second.location).data)["owner"] == "second"
    assert conditional.read(second.location).version == second.version


# Claims a run in a fresh process at a given moment and prints what it got.
CLAIM = """
import json, sys, time
from braintl.runclaim import claim_run
out_url, owner, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
print(json.dumps(claim_run(out_url, "key-a", owner)))
"""


def test_runs_claimed_at_once_never_share_a_run_id(out_url, monkeypatch):
    """An interrupted run (its lease expired) and four processes claiming at the same moment:
    one resumes it, the others get new run ids of their own."""
    monkeypatch.setenv(runlease.SECONDS_ENV, "30")
    interrupted = resolve(out_url).join("runs", "20260101T000000Z-aaaaaa")
    interrupted.join("config.json").write_json({"run_key": "key-a"})
    interrupted.join(runlease.LEASE).write_json({"owner": "crashed", "until": time.time() - 1})
    start = time.time() + 10  # after every process has imported braintl
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIM, out_url, f"flow-run-{i}", str(start)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    claims = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        claims.append(json.loads(out))
    assert time.time() > start
    run_ids = [claim["run_id"] for claim in claims]
    assert len(set(run_ids)) == 4, claims
    assert [c["run_id"] for c in claims if c["resumed"]] == [interrupted.path.rsplit("/", 1)[1]]
    for claim in claims:
        lease = resolve(out_url).join("runs", claim["run_id"], runlease.LEASE).read_json()
        assert lease["owner"] in {f"flow-run-{i}" for i in range(4)}
        assert claim["warning"] is None


def test_a_retried_flow_run_takes_its_own_run_back(out_url):
    """A flow run retried in its process resumes the run it leased; another flow run of the
    same settings, meanwhile, starts its own."""
    first = claim_run(out_url, "key-a", "flow-run-1")
    resolve(out_url).join("runs", first["run_id"], "config.json").write_json({"run_key": "key-a"})
    try:
        again = claim_run(out_url, "key-a", "flow-run-1")
        other = claim_run(out_url, "key-a", "flow-run-2")
    finally:
        runlease.release("flow-run-1")
        runlease.release("flow-run-2")
    assert again == {"run_id": first["run_id"], "resumed": True, "warning": None}
    assert other["run_id"] != first["run_id"] and not other["resumed"]


def test_latest_only_moves_forward(out_url):
    assert publish_latest(out_url, {"run_id": "20260102T000000Z-bbbbbb"})
    assert not publish_latest(out_url, {"run_id": "20260101T000000Z-aaaaaa"})  # began earlier
    assert read_latest(out_url)["run_id"] == "20260102T000000Z-bbbbbb"
    run_ids = [f"20260103T0000{s:02d}Z-cccccc" for s in range(8)]
    random.Random(0).shuffle(run_ids)
    moved = race(8, lambda i: publish_latest(out_url, {"run_id": run_ids[i]}))
    assert all(isinstance(m, bool) for m in moved), moved
    assert read_latest(out_url)["run_id"] == max(run_ids)


def test_a_run_whose_lease_was_taken_over_writes_nothing(s3_server, s3_bucket, monkeypatch):
    """The run's storage goes away (a proxy cut) for longer than its lease. Back again, it
    renews its lapsed lease when nobody took it; once another run took it over meanwhile, it
    refuses to write results or latest.json."""
    monkeypatch.setenv(runlease.SECONDS_ENV, "1")
    proxy = TcpProxy(int(s3_server.rsplit(":", 1)[1]))
    out_url = f"{s3_bucket}/out"
    run_url = f"{out_url}/runs/20260101T000000Z-aaaaaa"
    record = {"run_id": "20260101T000000Z-aaaaaa", "run_url": run_url}
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    lease = runlease.hold(run_url, "ours")  # its reads and writes go through the proxy
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    try:
        proxy.cut()
        time.sleep(1.5)  # lapsed, nobody took it
        assert runlease.holder(resolve(run_url)) is None
        proxy.restore()
        runlease.confirm(run_url)
        assert lease.lost is None and runlease.holder(resolve(run_url)) == "ours"

        proxy.cut()
        time.sleep(1.5)
        runlease.take(run_url, "theirs")  # the other run, straight to the server
        proxy.restore()
        with pytest.raises(runlease.LeaseLost, match="now held by theirs"):
            result_tasks.write_results.fn(run_url, {"metrics": [], "models": []})
        with pytest.raises(runlease.LeaseLost):
            result_tasks.publish_latest.fn(out_url, record)
        assert read_latest(out_url) is None
        assert not resolve(run_url).join("results.json").exists()
        runlease.release("ours")
        held = resolve(run_url).join(runlease.LEASE).read_json()
        assert held["owner"] == "theirs"  # the loser's release leaves the winner's lease
    finally:
        runlease.release("ours")
        proxy.close()


def test_a_server_that_ignores_conditions_is_named(s3_server, s3_bucket, monkeypatch):
    """moto honours If-None-Match and If-Match; with those headers stripped on the way, as a
    server ignoring them would, the probe says so and the lease carries the warning."""
    assert conditional.unsupported(resolve(s3_bucket).join("x")) is None
    proxy = TcpProxy(int(s3_server.rsplit(":", 1)[1]), rewrite=strip_conditions)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        problem = conditional.unsupported(resolve(s3_bucket).join("x"))
        assert problem and "ignores If-None-Match" in problem and proxy.url in problem
        lease = runlease.take(f"{s3_bucket}/out/runs/r1", "ours")
        assert lease.warning == problem
    finally:
        proxy.close()


@pytest.mark.parametrize("garbage", [b"{not json", b"[]", b'{"owner": 1, "until": "soon"}'])
def test_an_unreadable_lease_is_reported_and_taken_over(out_url, garbage, caplog):
    """A torn or hand-edited lease.json must not hold its run forever: it counts as expired,
    with a warning naming it, and the next taker replaces it with a valid lease."""
    run = resolve(out_url).join("runs", "r1")
    run.join(runlease.LEASE).write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="braintl.runlease"):
        assert runlease.holder(run) is None
        lease = runlease.take(run.url, "next")
    assert f"{run.join(runlease.LEASE).url}: unreadable lease" in caplog.text
    assert json.loads(conditional.read(lease.location).data)["owner"] == "next"


def test_an_unreadable_run_config_is_reported_and_skipped(out_url, caplog):
    """A newer run whose config.json is corrupt is skipped (warned about), so the interrupted
    run of the same settings behind it still resumes; with only the corrupt one, a new run
    starts: one bad file never blocks every later run."""
    runs = resolve(out_url).join("runs")
    runs.join("20260101T000000Z-aaaaaa", "config.json").write_json({"run_key": "key-a"})
    runs.join("20260102T000000Z-bbbbbb", "config.json").write_bytes(b'{"run_key": ')
    try:
        with caplog.at_level(logging.WARNING, logger="braintl.results"):
            resumed = claim_run(out_url, "key-a", "flow-run-1")
        assert resumed["run_id"] == "20260101T000000Z-aaaaaa" and resumed["resumed"]
        assert "20260102T000000Z-bbbbbb/config.json: unreadable" in caplog.text
        runs.join("20260101T000000Z-aaaaaa").mark_complete()
        fresh = claim_run(out_url, "key-a", "flow-run-2")
        assert not fresh["resumed"] and fresh["run_id"] != "20260102T000000Z-bbbbbb"
    finally:
        runlease.release("flow-run-1")
        runlease.release("flow-run-2")


def test_an_unreadable_latest_is_reported_and_replaced(out_url, caplog):
    """A corrupt latest.json reads as "no completed run" (so runs are not skipped on it, nor
    fail reading it) and the next completed run replaces it."""
    latest = resolve(out_url).join("latest.json")
    latest.write_bytes(b'{"run_id": ')
    with caplog.at_level(logging.WARNING, logger="braintl.results"):
        assert read_latest(out_url) is None
        assert publish_latest(out_url, {"run_id": "20260101T000000Z-aaaaaa"})
    assert f"{latest.url}: unreadable" in caplog.text
    assert read_latest(out_url) == {"run_id": "20260101T000000Z-aaaaaa"}
