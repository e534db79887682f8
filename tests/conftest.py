"""Shared fixtures: the real MRI set, synthetic phantoms, and a real S3-compatible server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import free_port

DATA_ENV = "BRAINTL_DATA_DIR"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; .ci/run installs it
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _data_dir() -> Path | None:
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``$BRAINTL_DATA_DIR/brain_mri``; skipped when absent unless BRAINTL_REQUIRE_DATA=1 (CI)."""
    root = _data_dir()
    path = root / "brain_mri" if root else None
    if path is None or not (path / "yes").is_dir():
        reason = (
            f"real MRI data not found: set {DATA_ENV} to the folder holding brain_mri/ "
            "(../shared/data in this project)"
        )
        if os.environ.get("BRAINTL_REQUIRE_DATA") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    from braintl.data.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(str(root), n_per_label={"yes": 24, "no": 24}, size=96, seed=0)
    return root


@pytest.fixture(scope="session")
def tensors_url(tmp_path_factory) -> str:
    """A small prepared tensor cache: 48 phantoms at 32 px, 3 folds, no augmentation."""
    from braintl.data.phantoms import write_phantom_dataset
    from braintl.data.prepare import DataConfig, prepare

    root = tmp_path_factory.mktemp("tensors")
    data = write_phantom_dataset(str(root / "data"), {"yes": 24, "no": 24}, size=64)
    config = DataConfig(preprocess={"image_size": 32}, augment={"enabled": False}, folds=3)
    return prepare(data, str(root / "out"), config).tensors_url


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A temporary Prefect server and database per test module, its results (the task cache)
    under a temporary home; a generous start-up time, as Ray and training keep the CPUs busy."""
    from temporary_prefect import temporary_prefect

    with temporary_prefect(tmp_path_factory.mktemp("prefect")):
        yield


@pytest.fixture
def chromium():
    """Headless Chromium driven by Playwright (no browser download: Debian's build)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package (.ci/run does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto's) on 127.0.0.1, with credentials in the env."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto S3 server did not start within 30 s")
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def alert_webhook():
    """A real HTTP server recording the posts of braintl's alert automations."""
    from webhook_recorder import webhook_recorder

    with webhook_recorder() as recorder:
        yield recorder


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory, s3_server, alert_webhook):
    """A real Prefect server with braintl's deployments and alerts applied and a process worker,
    shared by the deployment, alert and UI tests (see tests/prefect_services.py)."""
    from prefect_services import start_prefect_stack

    home = tmp_path_factory.mktemp("prefect-home")
    with start_prefect_stack(home, s3_server, alert_webhook.url) as stack:
        yield stack


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket; returns its ``s3://`` URL."""
    import uuid

    import s3fs

    name = f"braintl-{uuid.uuid4().hex[:8]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}"
