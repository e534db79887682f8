"""The cluster path: a Ray head started with `ray start --head` on 127.0.0.1, token
authentication on (Ray's default), and a run of the cluster-sweep deployment pointed at it
with ``ray_address``. Ray's state API shows that the trials and the fold tasks ran there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from prefect_services import TINY, api_client, wait_for_final_state
from support import free_port, port_open, wait_until_up

RAY = str(Path(sys.executable).with_name("ray"))
# Ray's state API, read in a child process that carries the cluster's token (the test process
# may hold another Ray's settings).
STATE = """
import json, sys
from ray.util.state import list_actors, list_nodes, list_tasks
address = sys.argv[1]
print(json.dumps({
    "nodes": [n.node_id for n in list_nodes(address=address)],
    "tasks": [[t.func_or_class_name, t.state, t.node_id] for t in list_tasks(address=address)],
    "actors": [[a.class_name, a.state, a.node_id] for a in list_actors(address=address)],
}))
"""


@pytest.fixture(scope="module")
def ray_cluster(prefect_stack, tmp_path_factory):
    """A one-node Ray cluster (2 CPUs) accepting the Prefect worker's token; its workers see the
    S3 server's AWS_* variables. `ray start --block` stops the whole cluster when terminated,
    so teardown touches no other Ray on the machine (as `ray stop` would)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": prefect_stack.ray_token}
    port, dashboard = free_port(), free_port()
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths
    with log.open("w") as out:
        head = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}"]
            + ["--num-cpus=2", "--num-gpus=0", "--dashboard-host=127.0.0.1"]
            + [f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}"]
            + [f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_up("Ray head", lambda: port_open(dashboard), head, log, 180)
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}"}
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray_state(cluster: dict, token: str) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    done = subprocess.run(
        [sys.executable, "-c", STATE, cluster["dashboard"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_cluster_sweep_runs_trials_and_folds_on_the_cluster(prefect_stack, ray_cluster):
    params = {
        **TINY,
        "backbones": ["scratch_cnn"],
        "out_url": f"{prefect_stack.out_url}/cluster",
        "ray_address": ray_cluster["address"],
        "sweep": {"num_samples": 2, "cpus_per_trial": 1, "gpus_per_trial": 0},
        "gpus_per_fold": 0,
    }
    with api_client(prefect_stack.api_url) as client:
        deployment = client.read_deployment_by_name("retrain/cluster-sweep")
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"params": params})
    final = wait_for_final_state(run.id, prefect_stack)
    assert final.state.is_completed(), final.state

    state = _ray_state(ray_cluster, prefect_stack.ray_token)
    folds = [t for t in state["tasks"] if t[0] == "train_fold"]
    assert len(folds) == 2 and all(t[1] == "FINISHED" for t in folds), state["tasks"]
    trials = [a for a in state["actors"] if a[0] == "ImplicitFunc"]  # Tune's function trials
    assert len(trials) == 2, state["actors"]
    assert {t[2] for t in folds + trials} <= set(state["nodes"])


def test_a_cluster_without_the_token_is_refused_with_the_fix(ray_cluster):
    """Without RAY_AUTH_TOKEN the connection fails with a message naming the variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["RAY_py_gcs_connect_timeout_s"] = "5"  # Ray retries the refused GCS for 30 s by default
    code = (
        "from braintl.errors import UserError\n"
        "from braintl.tuning import ensure_ray\n"
        "try:\n"
        f"    ensure_ray({ray_cluster['address']!r})\n"
        "except UserError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert "RAY_AUTH_TOKEN" in done.stdout and ray_cluster["address"] in done.stdout, done
