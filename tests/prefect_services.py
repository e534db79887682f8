"""Real services for the deployment tests: a `prefect server` (SQLite in a temporary home), the
deployments and alert automations of ``deployments/`` applied to it as an operator does
(``deployments/apply.py``), and a `prefect worker` on a process pool. The tests share one of each
(see the ``prefect_stack`` fixture) so CI starts one server."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support import free_port, wait_until_up

REPO = Path(__file__).resolve().parents[1]
APPLY = REPO / "deployments" / "apply.py"
POOL = "braintl-process"
# The smallest useful run: two models, one trial each, three folds (fold 0 tunes, two are
# scored) on 32 px phantoms.
TINY = {
    "profile": "quick",
    "backbones": ["scratch_cnn", "mobilenet_v2"],
    "strategies": ["frozen"],
    "image_size": 32,
    "epochs": 1,
    "folds": 3,
    "sweep": {"num_samples": 1},
}
TIMEZONE = "Europe/Berlin"


def _prefect(*args: str, env: dict[str, str], timeout: float = 180) -> str:
    """One `prefect` CLI command; its output, or an error carrying that output."""
    return run_checked([sys.executable, "-m", "prefect", "--no-prompt", *args], env, timeout)


def run_checked(command: list[str], env: dict[str, str], timeout: float = 180) -> str:
    """A command run from the repository root; its output, or an error carrying that output."""
    done = subprocess.run(
        command,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _healthy(api_url: str) -> bool:
    with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
        return response.status == 200


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class PrefectStack:
    """What the tests talk to: the server's API and UI, its clients' environment, where the
    runs write, and the local folder deployed runs may read scans from (with ``out_url``, the
    roots apply.py allows)."""

    api_url: str
    env: dict[str, str]
    ui_url: str
    out_url: str
    ray_token: str
    logs: Path
    data_root: str


def _set_variables(api_url: str, values: dict) -> None:
    from prefect.client.schemas.actions import VariableCreate

    with api_client(api_url) as client:
        for name, value in values.items():
            client.create_variable(VariableCreate(name=name, value=value))


@contextmanager
def start_prefect_server(home: Path, **settings: str):
    """A `prefect server start` (SQLite under ``home``, its services running: a crashed flow
    run's concurrency slots are reclaimed only by those); yields the environment that points
    clients at it. ``settings``: more PREFECT_* variables for the server."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
    }
    server_log = logs / "server.log"
    with server_log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
            + ["--port", str(port)],
            env={**env, **settings},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_up("prefect server", lambda: _healthy(api_url), server, server_log, 120)
        yield env
    finally:
        stop_process(server)


@contextmanager
def start_prefect_stack(home: Path, s3_endpoint: str, alert_webhook: str):
    """Server, variables, pool, deployments and automations, and one process worker whose flow
    runs write to a fresh bucket of the S3 server at ``s3_endpoint``; alerts go to
    ``alert_webhook``. All stopped on exit. Logs stay under ``home/logs``."""
    import s3fs

    bucket = f"braintl-deploy-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True).mkdir(bucket)
    out_url = f"s3://{bucket}"
    ray_token = secrets.token_hex(32)
    logs = home / "logs"
    data_root = str(home / "scans")
    with start_prefect_server(home) as env:
        api_url = env["PREFECT_API_URL"]
        _set_variables(
            api_url,
            {
                "braintl_work_pool": POOL,
                "braintl_timezone": TIMEZONE,
                "braintl_nightly": {**TINY, "out_url": out_url},
                "braintl_adhoc": {**TINY, "out_url": out_url},
                "braintl_data_url": data_root,
                "braintl_out_url": out_url,
                "braintl_ray_address": "http://braintl-ray-head:8265",
                "braintl_alert_webhook": alert_webhook,
            },
        )
        _prefect("work-pool", "create", POOL, "--type", "process", env=env)
        apply_deployments(env)
        # The AWS_* variables of the S3 server come with os.environ; the Ray token is the one a
        # cluster started by the tests accepts (tests/test_ray_cluster.py).
        worker_env = {
            **env,
            "BRAINTL_HOME": str(REPO),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": ray_token,
        }
        with (logs / "worker.log").open("w") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
                cwd=home,
                env=worker_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            yield PrefectStack(
                api_url, env, api_url.removesuffix("/api"), out_url, ray_token, logs, data_root
            )
        finally:
            stop_process(worker)


def apply_deployments(env: dict[str, str]) -> str:
    """`python deployments/apply.py`, the one command that applies deployments and alerts."""
    return run_checked([sys.executable, str(APPLY)], env)


@contextmanager
def api_client(api_url: str):
    """A synchronous Prefect client of the server at ``api_url``."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def wait_for_final_state(flow_run_id, stack: PrefectStack, timeout: float = 600):
    """Poll the server until the flow run is final; its last read, or an error with the
    worker's log when it takes longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with api_client(stack.api_url) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(2)
    worker_log = (stack.logs / "worker.log").read_text()[-4000:]
    raise TimeoutError(f"flow run {flow_run_id} not final after {timeout} s:\n{worker_log}")


def wait_for_events(event_filter, stack: PrefectStack, timeout: float = 60) -> list:
    """The events the server stored that match ``event_filter``, polled until there is one (the
    server persists events in batches); an error after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with api_client(stack.api_url) as client:
        while time.monotonic() < deadline:
            events = client.read_events(event_filter, limit=50).events  # the server's maximum
            if events:
                return events
            time.sleep(1)
    raise TimeoutError(f"no event matching {event_filter} stored after {timeout} s")
