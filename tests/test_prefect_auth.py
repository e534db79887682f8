"""The Prefect API as the shipped configuration runs it: a real `prefect server` with
``PREFECT_SERVER_API_AUTH_STRING`` (Compose and the Helm values set it). Without the string, or
with a wrong one, nothing but the health check answers; clients with ``PREFECT_API_AUTH_STRING``
work as before (issue 17: an open API lets anyone register a deployment that runs a shell on the
worker)."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prefect_services import stop_process
from support import free_port, wait_until_up

pytestmark = pytest.mark.slow


def _status(url: str, auth: str | None = None, body: bytes | None = b"{}") -> int:
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    request.add_header("Content-Type", "application/json")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def authenticated_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-auth")
    port = free_port()
    auth = f"braintl:{secrets.token_hex(12)}"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PREFECT_")  # nothing of another server's settings
    }
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
    }
    log = home / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
            + ["--port", str(port)],
            env={**env, "PREFECT_SERVER_API_AUTH_STRING": auth},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_until_up(
            "prefect server", lambda: _status(f"{api}/health", body=None) == 200, server, log, 180
        )
        yield api, auth, env
    finally:
        stop_process(server)


def test_the_api_refuses_requests_without_the_auth_string(authenticated_server):
    api, auth, _ = authenticated_server
    for path in ("deployments/filter", "variables/filter", "work_pools/filter"):
        assert _status(f"{api}/{path}") == 401, path
        assert _status(f"{api}/{path}", auth="braintl:wrong") == 401, path
        assert _status(f"{api}/{path}", auth=auth) == 200, path


def test_clients_with_the_auth_string_work_and_others_are_refused(authenticated_server):
    api, auth, env = authenticated_server
    client = env | {"PREFECT_API_URL": api}

    def prefect(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", *args],
            env=client | extra,
            capture_output=True,
            text=True,
            timeout=180,
        )

    refused = prefect("variable", "set", "braintl_probe", "open")
    assert refused.returncode != 0
    allowed = prefect("variable", "set", "braintl_probe", "closed", PREFECT_API_AUTH_STRING=auth)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    read = prefect("variable", "get", "braintl_probe", PREFECT_API_AUTH_STRING=auth)
    assert read.returncode == 0 and "closed" in read.stdout, read.stdout + read.stderr
