"""The cluster paths on a real multi-node Ray cluster on 127.0.0.1 with token authentication (Ray's
default): a head that only schedules (no CPUs, no GPUs) and two worker nodes each declaring 2
CPUs and 2 GPUs (Ray schedules declared GPUs exactly like real ones), storage on the moto S3
server. The cluster-sweep deployment submits its stages as Ray jobs to the dashboard address;
a flow runner inside the cluster uses the GCS address. Ray's state API shows where trials and
folds ran; killing one worker node mid-sweep leaves the sweep to finish on the other."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect_services import TINY, api_client, wait_for_final_state
from ray_nodes import ray_cluster

from braintl import cluster
from braintl.storage import resolve
from braintl.training.pause import PAUSE_ENV

WORKER = ["--num-cpus=2", "--num-gpus=2"]
# The nodes' own storage keys (moto takes any): recognisable, to be found nowhere on the cluster.
NODE_KEYS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKENODE5678",
    "AWS_SECRET_ACCESS_KEY": "fakeNodeSecret-1a2b",
}
# Prefect keys in the environment of the flow runs that submit the jobs (or drive Ray directly),
# recognisable too; the test server checks neither, so the runs work with them.
PREFECT_KEYS = {
    "PREFECT_API_KEY": "pnu_fakePrefectKey3c4d",
    "PREFECT_API_AUTH_STRING": "admin:fakePrefectAuth-5e6f",
}
# Ray's state API, read in a child process that carries the cluster's token (the test process
# may hold another Ray's settings). Jobs need ``detail=True``: without it the state API leaves
# out their metadata and driver node.
STATE = """
import json, sys
from ray.util.state import list_actors, list_jobs, list_nodes, list_tasks
address = sys.argv[1]
print(json.dumps({
    "head": [n.node_id for n in list_nodes(address=address) if n.is_head_node][0],
    "resources": {n.node_id: list(n.resources_total) for n in list_nodes(address=address)},
    "tasks": [[t.func_or_class_name, t.state, t.node_id] for t in list_tasks(address=address)],
    "actors": [[a.class_name, a.state, a.node_id] for a in list_actors(address=address)],
    "jobs": [
        [j.submission_id, (j.metadata or {}).get("prefect_flow_run_id"), j.driver_node_id]
        for j in list_jobs(address=address, detail=True) if j.submission_id
    ],
}))
"""


def _token_env(token: str) -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


@pytest.fixture(scope="module")
def nodes(prefect_stack, tmp_path_factory):
    """Head and two worker nodes accepting the Prefect worker's token; every node sees the S3
    server's AWS_* variables and runs job drivers with this Python (`python` first on PATH)."""
    env = {**_token_env(prefect_stack.ray_token), **NODE_KEYS}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    with ray_cluster(tmp_path_factory.mktemp("ray-nodes"), env, [WORKER, WORKER]) as running:
        yield running


def _ray_state(dashboard: str, token: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", STATE, dashboard],
        env=_token_env(token),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_deployment(stack, params: dict):
    """A cluster-sweep run to completion, its flow-run process holding ``PREFECT_KEYS``."""
    with api_client(stack.api_url) as client:
        deployment = client.read_deployment_by_name("retrain/cluster-sweep")
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"params": params}, job_variables={"env": PREFECT_KEYS}
        )
    final = wait_for_final_state(run.id, stack)
    assert final.state.is_completed(), final.state
    return final


def _overlap(a: dict, b: dict) -> bool:
    return a["started"] < b["reported"] and b["started"] < a["reported"]


@pytest.mark.slow
def test_cluster_sweep_as_ray_jobs_shares_gpus_across_both_workers(prefect_stack, nodes):
    """Four trials of ¼ GPU and ½ CPU: Ray packs a node to half its CPUs, then spreads, so two
    trials share a GPU on each worker; the two folds (½ GPU, 1 CPU) land one per worker. The
    three jobs' drivers (the sweep's, the folds') run on worker nodes, never on the head."""
    out_url = f"{prefect_stack.out_url}/jobs"
    params = {
        **TINY,
        "backbones": ["scratch_cnn"],
        "out_url": out_url,
        "ray_address": nodes.dashboard,
        "sweep": {
            "num_samples": 4,
            "max_concurrent_trials": 4,
            "cpus_per_trial": 0.5,
            "gpus_per_trial": 0.25,
        },
        "cpus_per_fold": 1,
        "gpus_per_fold": 0.5,
    }
    final = _run_deployment(prefect_stack, params)

    state = _ray_state(nodes.dashboard, prefect_stack.ray_token)
    workers = {n for n in {a[2] for a in state["actors"]} if n != state["head"]}
    folds = [t for t in state["tasks"] if t[0] == "train_fold"]
    assert len(folds) == 2 and all(t[1] == "FINISHED" for t in folds), state["tasks"]
    trial_actors = [a for a in state["actors"] if a[0] == "ImplicitFunc"]
    assert {a[2] for a in trial_actors} == {t[2] for t in folds} == workers, state
    assert len(workers) == 2 and state["head"] not in workers
    drivers = [node for _, run, node in state["jobs"] if run == str(final.id)]
    assert len(drivers) == 3 and set(drivers) <= workers, state["jobs"]  # sweep + 2 folds

    run_url = resolve(out_url).join("latest.json").read_json()["run_url"]
    sweep = resolve(run_url).join("sweep.json").read_json()
    trials = next(iter(sweep.values()))["trials"]
    assert len(trials) == 4 and all(t["error"] is None for t in trials), trials
    where = [t["placement"] for t in trials]
    assert {p["node_id"] for p in where} == workers
    shared = [
        (a, b)
        for i, a in enumerate(where)
        for b in where[i + 1 :]
        if (a["node_id"], a["gpu_ids"]) == (b["node_id"], b["gpu_ids"])
        and len(a["gpu_ids"]) == 1
        and _overlap(a, b)
    ]
    assert shared, where  # two trials on one declared GPU at the same time
    assert resolve(run_url).join("report", "index.html").exists(), final.state


@pytest.mark.slow
def test_cluster_sweep_from_inside_the_cluster_uses_the_gcs_address(prefect_stack, nodes):
    """A flow runner on a cluster node drives Ray directly: its folds run there, no job."""
    params = {
        **TINY,
        "backbones": ["scratch_cnn"],
        "out_url": f"{prefect_stack.out_url}/gcs",
        "ray_address": nodes.address,
        "sweep": {"num_samples": 1, "cpus_per_trial": 1, "gpus_per_trial": 0},
        "gpus_per_fold": 0,
    }

    def count(state: dict, name: str) -> int:
        return sum(name in item[0] for item in state["tasks"] + state["actors"])

    before = _ray_state(nodes.dashboard, prefect_stack.ray_token)
    _run_deployment(prefect_stack, params)
    after = _ray_state(nodes.dashboard, prefect_stack.ray_token)
    assert count(after, "train_fold") == count(before, "train_fold") + 2, after
    assert count(after, "JobSupervisor") == count(before, "JobSupervisor"), after


@pytest.mark.slow
def test_cancelling_the_flow_run_stops_its_ray_job(prefect_stack, nodes, monkeypatch):
    """Cancelled from Prefect while its sweep job trains: the flow's cancellation hook stops the
    job, so the cluster's GPUs are not held for a run nobody waits for."""
    from prefect.states import Cancelling

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", prefect_stack.ray_token)
    params = {
        **TINY,
        "backbones": ["scratch_cnn"],
        "epochs": 500,  # far longer than the test waits: the job is cancelled while it trains
        "out_url": f"{prefect_stack.out_url}/cancel",
        "ray_address": nodes.dashboard,
        "sweep": {"num_samples": 1, "cpus_per_trial": 0.5, "grace_period": 500},
    }
    with api_client(prefect_stack.api_url) as client:
        deployment = client.read_deployment_by_name("retrain/cluster-sweep")
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"params": params})
    jobs = cluster.client(nodes.dashboard)

    def its_jobs() -> list:
        mine = {cluster.PREFECT_RUN_KEY: str(run.id)}
        return [j for j in jobs.list_jobs() if (j.metadata or {}).items() >= mine.items()]

    deadline = time.monotonic() + 600
    while not [j for j in its_jobs() if j.status.value == "RUNNING"]:
        assert time.monotonic() < deadline, "the flow run's sweep job never ran"
        time.sleep(2)
    with api_client(prefect_stack.api_url) as client:
        client.set_flow_run_state(run.id, Cancelling(), force=True)
    final = wait_for_final_state(run.id, prefect_stack)
    assert final.state.is_cancelled(), final.state
    deadline = time.monotonic() + 120
    while {j.status.value for j in its_jobs()} != {"STOPPED"}:
        assert time.monotonic() < deadline, [(j.submission_id, j.status) for j in its_jobs()]
        time.sleep(2)


def test_no_storage_or_prefect_key_on_the_cluster(prefect_stack, nodes):
    """After the runs above: the nodes' AWS keys and the flow runs' Prefect keys are in no file
    of any node (Ray's logs, the runtime-env agent's records), no job's record (metadata,
    runtime env, entrypoint, message) and no stored object: the jobs carry no environment, and
    the Tune drivers do not copy their keys into trials' runtime envs (braintl.credentials)."""
    secrets = [v.encode() for v in [*NODE_KEYS.values(), *PREFECT_KEYS.values()]]
    files = [p for n in [nodes.head, *nodes.workers] for p in Path(n.temp_dir).rglob("*")]
    logs = [p for p in files if p.is_file() and not p.is_symlink()]
    assert any(p.name == "runtime_env_agent.log" for p in logs)
    for path in logs:
        assert not [s for s in secrets if s in path.read_bytes()], path
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", prefect_stack.ray_token)
        records = [j.model_dump_json() for j in cluster.client(nodes.dashboard).list_jobs()]
    assert records and not [r for r in records if any(s.decode() in r for s in secrets)]
    out = resolve(prefect_stack.out_url)
    stored = [key for run in ("jobs", "gcs") for key in out.fs.find(out.join(run).path)]
    assert stored
    for key in stored:
        assert not [s for s in secrets if s in out.fs.cat_file(key)], key


def _writes(url: str, status: int = 0, after: Path | None = None) -> str:
    """A job command that waits for the file ``after`` (if given), writes ``{"wrote": url}`` at
    ``url`` and exits with ``status``."""
    wait = f"while not os.path.exists({str(after)!r}): time.sleep(0.2)\n" if after else ""
    code = (
        f"import os, sys, time\nfrom braintl.storage import resolve\n{wait}"
        f"resolve({url!r}).write_json({{'wrote': {url!r}}})\nsys.exit({status})"
    )
    return f"python -c {shlex.quote(code)}"


@pytest.mark.slow
def test_jobs_are_reattached_reused_resubmitted_and_stopped(
    prefect_stack, nodes, monkeypatch, tmp_path
):
    """What a flow that crashed and resumes sees: a job still running is followed, not
    duplicated; one that succeeded is reused; one that failed gets a numbered next attempt;
    an interrupted wait and a flow run's hook stop the job."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", prefect_stack.ray_token)
    jobs = cluster.client(nodes.dashboard)
    out = resolve(prefect_stack.out_url).join("jobs-api")
    base = cluster.job_id(out.url)

    def status(submission_id: str, becomes: str | None = None) -> str:
        """The job's status, or the first that is ``becomes`` within a minute."""
        deadline = time.monotonic() + 60
        while (now := jobs.get_job_status(submission_id).value) != becomes and becomes:
            if time.monotonic() > deadline:
                break
            time.sleep(1)
        return now

    # A crashed flow submitted it, held until the resumed flow has attached to it.
    held = tmp_path / "release"
    jobs.submit_job(entrypoint=_writes(out.join("a").url, after=held), submission_id=f"{base}-a")
    seen: list[str] = []

    def attached(line: str) -> None:
        seen.append(line)
        held.touch()

    a = out.join("a").url
    record = cluster.run_job(nodes.dashboard, f"{base}-a", "false", a, None, attached, 1)
    assert record == {"wrote": a} and seen[0].startswith(f"re-attached to Ray job {base}-a")
    # Succeeded: reused, nothing submitted (the command given would fail).
    assert cluster.run_job(nodes.dashboard, f"{base}-a", "false", a) == record
    # Failed: the error carries Ray's reason; the next call submits attempt 2.
    b = out.join("b").url
    with pytest.raises(cluster.JobFailed, match=f"{base}-b FAILED"):
        cluster.run_job(nodes.dashboard, f"{base}-b", _writes(b, status=1), b)
    assert cluster.run_job(nodes.dashboard, f"{base}-b", _writes(b), b) == {"wrote": b}
    assert status(f"{base}-b-2") == "SUCCEEDED"
    assert len([j for j in jobs.list_jobs() if (j.submission_id or "").startswith(base)]) == 3

    def interrupted(line: str) -> None:
        raise TimeoutError("the task's timeout")

    never = tmp_path / "never"
    c = out.join("c").url
    with pytest.raises(TimeoutError):
        cluster.run_job(nodes.dashboard, f"{base}-c", _writes(c, after=never), c, None, interrupted)
    assert status(f"{base}-c", becomes="STOPPED") == "STOPPED"
    # A cancelled flow run's hook stops the jobs tagged with its id, and no other.
    for name, run in (("d", "run-1"), ("e", "run-2")):
        jobs.submit_job(
            entrypoint=_writes(out.join(name).url, after=never),
            submission_id=f"{base}-{name}",
            metadata={cluster.PREFECT_RUN_KEY: run},
        )
    assert cluster.stop_jobs(nodes.dashboard, **{cluster.PREFECT_RUN_KEY: "run-1"}) == [f"{base}-d"]
    assert status(f"{base}-d", becomes="STOPPED") == "STOPPED"
    assert status(f"{base}-e") in {"PENDING", "RUNNING"}
    jobs.stop_job(f"{base}-e")


@pytest.mark.slow
def test_a_sweep_job_survives_losing_a_worker_node(
    prefect_stack, nodes, tensors_on_s3, tmp_path, monkeypatch
):
    """Four trials, two per worker, held after their first epoch's checkpoint
    (braintl.training.pause); the worker node without the job's driver is killed (every
    process of it at once) and the rest released: Tune restarts the lost trials on the other
    node from their checkpoints, and the job (submitted as a crashed flow would have left it,
    then re-attached) succeeds."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", prefect_stack.ray_token)
    spec = {
        "tensors_url": tensors_on_s3,
        "pairs": [["scratch_cnn", "full"]],
        "base": {"weights": "none", "epochs": 2, "batch_size": 16, "seed": 0},
        "sweep": {
            "num_samples": 4,
            "max_concurrent_trials": 4,
            "cpus_per_trial": 0.5,
            "grace_period": 2,  # no early stopping: every trial trains both epochs
        },
        "storage_url": f"{prefect_stack.out_url}/node-loss/runs/r1/sweep",
        "name": "sweep",
    }
    submission_id = cluster.job_id(resolve(spec["storage_url"]).join("sweep").url)
    pause = tmp_path / "pause"
    cluster.submit(
        cluster.client(nodes.dashboard),
        submission_id,
        cluster.entrypoint("sweep", spec),
        runtime_env={"env_vars": {PAUSE_ENV: f"1:{pause}"}},
    )
    deadline = time.monotonic() + 600
    while len(list(pause.glob("paused-*"))) < 4:
        assert time.monotonic() < deadline, "four trials never reached their first checkpoint"
        time.sleep(1)
    state = _ray_state(nodes.dashboard, prefect_stack.ray_token)
    busy = {a[2] for a in state["actors"] if a[0] == "ImplicitFunc" and a[1] == "ALIVE"}
    driver = next(node for job, _, node in state["jobs"] if job == submission_id)
    assert len(busy) == 2 and driver in busy, (state["actors"], state["jobs"])
    (lost,) = busy - {driver}
    nodes.worker(state["resources"][lost]).kill()
    (pause / "release").touch()

    result = cluster.run_job(
        nodes.dashboard,
        submission_id,
        "false",  # never run: the job is still running, so it is followed
        cluster.result_url("sweep", spec),
    )
    trials = result["trials"]
    assert len(trials) == 4 and all(t["error"] is None for t in trials), trials
    where = [(t["trial_id"], t["placement"]["node_id"], t["epochs_run"]) for t in trials]
    assert all(epochs == 2 and node == driver for _, node, epochs in where), (driver, where)


@pytest.fixture
def tensors_on_s3(s3_bucket, tmp_path) -> str:
    from braintl.data.phantoms import write_phantom_dataset
    from braintl.data.prepare import DataConfig, prepare

    data = write_phantom_dataset(str(tmp_path / "data"), {"yes": 24, "no": 24}, size=64)
    config = DataConfig(preprocess={"image_size": 32}, augment={"enabled": False}, folds=3)
    return prepare(data, f"{s3_bucket}/out", config).tensors_url


@pytest.mark.parametrize("address", ["gcs", "dashboard"])
def test_a_cluster_without_the_token_is_refused_with_the_fix(nodes, address):
    """Without RAY_AUTH_TOKEN the connection fails with a message naming the variables."""
    target = nodes.address if address == "gcs" else nodes.dashboard
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["RAY_py_gcs_connect_timeout_s"] = "5"  # Ray retries the refused GCS for 30 s by default
    connect = f"ensure_ray({target!r})" if address == "gcs" else f"client({target!r}).list_jobs()"
    code = (
        "from braintl.cluster import client\n"
        "from braintl.errors import UserError\n"
        "from braintl.tuning import ensure_ray\n"
        "try:\n"
        f"    {connect}\n"
        "except UserError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert "RAY_AUTH_TOKEN" in done.stdout and target in done.stdout, done
