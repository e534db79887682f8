"""Secrets stay secret: a whole retrain run with recognisable fake credentials, then a search for
them in every log line, artifact, Prefect record, result file and stored object."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import ray
import s3fs
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.settings import (
    PREFECT_API_KEY,
    PREFECT_HOME,
    PREFECT_LOCAL_STORAGE_PATH,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness
from support import small_params

from braintl.data.phantoms import write_phantom_dataset
from braintl.storage import resolve
from flows.retrain import retrain

ACCESS_KEY = "AKIAFAKESECRET1234"
SECRET_KEY = "fakeSecretValue-9f8e7d"
PREFECT_KEY = "pnu_fakePrefectKey-5c4b3a"
SECRETS = (ACCESS_KEY, SECRET_KEY, PREFECT_KEY)
URL_WITH_CREDENTIALS = re.compile(r"[a-z][\w+.-]*://[^/\s\"']*@")


def _leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s for s in SECRETS if s.encode() in data]


@pytest.fixture
def fake_credentials(s3_server, monkeypatch):
    """The fake AWS keys in the environment (moto accepts any), for this process and for the
    Ray it starts (restarted on both sides so no worker keeps the old keys)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    ray.shutdown()
    yield
    ray.shutdown()


@pytest.fixture
def prefect_with_key(tmp_path):
    """A temporary Prefect server; the client holds a fake API key (sent, never needed)."""
    home = tmp_path / "prefect"
    settings = {PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: home / "storage"}
    with (
        temporary_settings(settings),
        prefect_test_harness(server_startup_timeout=180),
        temporary_settings({PREFECT_API_KEY: PREFECT_KEY}),
    ):
        yield home


def _ray_log_files() -> list[Path]:
    """Log files of the Ray session this process started (Ray has no public accessor)."""
    node = ray._private.worker._global_node
    return [p for p in Path(node.get_logs_dir_path()).rglob("*") if p.is_file()]


def _prefect_records(flow_run_id) -> list[str]:
    """Everything the Prefect server holds about the run, as text."""
    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=run_filter)
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    assert logs and len(artifacts) >= 3 and task_runs
    return [
        flow_run.model_dump_json(),
        *(t.model_dump_json() for t in task_runs),
        *(f"{log.name} {log.message}" for log in logs),
        *(a.model_dump_json() for a in artifacts),
    ]


@pytest.mark.slow
def test_fake_credentials_appear_nowhere(
    fake_credentials, prefect_with_key, s3_bucket, tmp_path, caplog, capfd
):
    data = tmp_path / "data"
    write_phantom_dataset(str(data), n_per_label={"yes": 12, "no": 12}, size=32, seed=0)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.put(str(data), f"{s3_bucket}/scans", recursive=True)
    params = small_params(f"{s3_bucket}/scans", f"{s3_bucket}/braintl", epochs=1)
    # INFO, the level runs log at (PREFECT_LOGGING_LEVEL). At DEBUG botocore prints each signed
    # request's Authorization header, which names the access key ID (never the secret key).
    caplog.set_level(logging.INFO)
    state = retrain(params, return_state=True)
    assert state.is_completed(), state.message
    record = state.result()

    # Every object the run left in the bucket: results, reports, configs, caches, Tune's
    # experiment state and every checkpoint, byte for byte.
    objects = fs.find(s3_bucket)
    assert any(o.endswith(".pt") for o in objects) and any("/sweep/" in o for o in objects)
    for key in objects:
        assert _leaks(fs.cat_file(key)) == [], key
    config = resolve(record["run_url"]).join("config.json").read_bytes().decode()
    assert "scans" in config and not URL_WITH_CREDENTIALS.search(config)

    printed = capfd.readouterr()
    captured = [printed.out, printed.err, *(r.getMessage() for r in caplog.records)]
    assert "folds done" in printed.out + printed.err + caplog.text
    for text in captured + _prefect_records(state.state_details.flow_run_id):
        assert _leaks(text) == [], text[:200]
    for path in _ray_log_files() + [p for p in prefect_with_key.rglob("*") if p.is_file()]:
        assert _leaks(path.read_bytes()) == [], path


def test_parameters_with_credentials_fail_without_echoing_them(prefect_with_key):
    """A URL with embedded keys given to the flow (the Prefect form) fails validation, and the
    failure message stored on the server does not repeat the keys."""
    url = f"s3://{ACCESS_KEY}:{SECRET_KEY}@bucket/scans"
    state = retrain(params={"data_url": url}, return_state=True)
    assert state.is_failed()
    assert "data_url" in state.message and "s3://***@bucket/scans" in state.message
    assert _leaks(state.message) == []
