"""The retrain flow end to end: a temporary Prefect server, real local Ray, a real S3 server."""

from __future__ import annotations

import pytest
import ray
from prefect import flow, get_client, task
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.task_engine import TaskRunTimeoutError
from prefect.variables import Variable
from pydantic import ValidationError
from ray.exceptions import WorkerCrashedError
from support import TWO_MODELS, small_params

from braintl import folds
from braintl.cli import build_parser
from braintl.commands.run import params_from_args
from braintl.data.phantoms import write_phantom_dataset
from braintl.errors import UserError
from braintl.storage import StorageError, resolve
from braintl.timeouts import expired
from braintl.training import TrainConfig
from flows.params import RetrainParams
from flows.predict import predict
from flows.retrain import retrain
from flows.roots import VARIABLE
from tasks.data import STORAGE_RETRIES
from tasks.results_storage import RESULTS_DIR
from tasks.training import TRAINING_RETRIES

CV_NAMES = {f"cv-{m}-fold-{k}" for m in ("scratch_cnn-full", "mobilenet_v2-frozen") for k in (1, 2)}


@pytest.fixture
def fresh_ray(s3_bucket):
    """Ray started by the flow after the S3 fixture, so its workers see the AWS variables."""
    ray.shutdown()
    yield
    ray.shutdown()


def _task_runs(state) -> dict[str, set[str]]:
    """Task run name → the states its runs ended in, read back from the Prefect server;
    Prefect's generated names (``prepare-3fa``) lose their random suffix."""
    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=flow_run)
    states: dict[str, set[str]] = {}
    for run in runs:
        name = run.name if run.name.startswith(("cv-", "sweep-")) else run.name.rsplit("-", 1)[0]
        states.setdefault(name, set()).add(run.state.name)
    return states


def _artifact_keys(state) -> set[str]:
    flow_run_id = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=flow_run_id))
    return {a.key for a in artifacts}


@pytest.mark.slow
def test_retrain_flow_end_to_end(prefect_server, fresh_ray, s3_bucket, tmp_path, monkeypatch):
    """A failing fold leaves latest.json alone; the rerun reuses the cached stages, publishes
    and becomes the champion; an unchanged rerun ends "Nothing changed"; force runs again and
    challenges the champion."""
    data = tmp_path / "data"
    write_phantom_dataset(str(data), n_per_label={"yes": 16, "no": 16}, size=32, seed=0)
    params = small_params(data, s3_bucket, **TWO_MODELS)
    latest = resolve(s3_bucket).join("latest.json")

    real = folds.train_fold_on_ray

    def flaky(tensors_url, config, fold, *args, **kwargs):
        if config["backbone"] == "scratch_cnn" and fold == 1:  # fails at once: not retried
            raise UserError("injected fold failure")
        return real(tensors_url, config, fold, *args, **kwargs)

    monkeypatch.setattr(folds, "train_fold_on_ray", flaky)
    failed = retrain(params, return_state=True)
    assert failed.is_failed()
    assert not latest.exists()
    monkeypatch.setattr(folds, "train_fold_on_ray", real)

    done = retrain(params, return_state=True)
    assert done.is_completed() and done.name == "Completed"
    record = done.result()
    runs = _task_runs(done)
    assert runs["prepare"] == runs["sweep-random-init"] == {"Cached"}
    assert {name for name in runs if name.startswith("cv-")} == CV_NAMES
    assert runs["cv-scratch_cnn-full-fold-1"] == {"Completed"}
    assert {"retrain-results", "retrain-summary", "retrain-folds"} <= _artifact_keys(done)
    assert latest.read_json()["run_id"] == record["run_id"]
    champion = resolve(s3_bucket).join("champion.json")
    assert champion.read_json()["run_id"] == record["run_id"]  # the first model
    run = resolve(record["run_url"])
    assert run.join("config.json").exists()
    assert run.join("results.json").read_json()["models"]
    assert "scratch_cnn/full" in run.join("table.md").read_bytes().decode()

    same = retrain(params, return_state=True)
    assert same.is_completed() and same.name == "Nothing changed"
    assert latest.read_json()["run_id"] == record["run_id"]

    forced = retrain(params.model_copy(update={"force": True}), return_state=True)
    assert forced.name == "Completed"
    assert forced.result()["run_id"] != record["run_id"]
    assert latest.read_json()["run_id"] == forced.result()["run_id"]
    # The forced rerun challenged the champion on the S3 store: its decision names who holds it.
    decision = forced.result()["champion"]
    assert champion.read_json()["run_id"] == decision["champion"]
    assert decision["champion"] == (
        forced.result()["run_id"] if decision["promote"] else record["run_id"]
    )
    assert "champion" in _artifact_keys(forced)
    forced_runs = _task_runs(forced)
    assert all(forced_runs[name] == {"Completed"} for name in CV_NAMES | {"sweep-random-init"})

    # The output emptied but for OUT/.prefect (a clean-up that spared Prefect's records): the
    # cached records of prepare and the folds point at deleted files, so those stages run again
    # instead of failing the run.
    bucket = resolve(s3_bucket)
    for path in bucket.fs.ls(bucket.path, refresh=True):
        if path.rsplit("/", 1)[-1] != RESULTS_DIR:
            bucket.fs.rm(path, recursive=True)
    rebuilt = retrain(params, return_state=True)
    assert rebuilt.name == "Completed", rebuilt.message
    rebuilt_runs = _task_runs(rebuilt)
    assert all(rebuilt_runs[name] == {"Cached", "Completed"} for name in {"prepare", *CV_NAMES})
    run = resolve(rebuilt.result()["run_url"])
    assert run.join("results.json").read_json()["models"]


def _validation_error() -> ValidationError:
    try:
        TrainConfig(epochs=0)
    except ValidationError as error:
        return error
    raise AssertionError("epochs=0 was accepted")


@pytest.mark.parametrize("policy", [STORAGE_RETRIES, TRAINING_RETRIES], ids=["storage", "training"])
@pytest.mark.parametrize(
    ("error", "attempts"),
    [
        (StorageError("s3://b: storage unreachable"), 4),
        (WorkerCrashedError(), 4),
        (UserError("bad"), 1),
        (_validation_error(), 1),
        (expired("cross-validation", 1, "fold 0"), 1),
        (TaskRunTimeoutError("Scope timed out after 1 second(s)."), 1),
    ],
    ids=["outage", "lost-worker", "user-error", "invalid-setting", "stage-timeout", "task-timeout"],
)
def test_tasks_retry_outages_not_user_mistakes_or_timeouts(prefect_server, policy, error, attempts):
    calls = []

    @task(**{**policy, "retry_delay_seconds": 0})
    def touch_storage():
        calls.append(1)
        raise error

    @flow
    def one_task():
        touch_storage()

    assert one_task(return_state=True).is_failed()
    assert len(calls) == attempts


def test_run_options_override_the_profile():
    # paper asks for GPUs: none here; a cluster run stores on S3
    cluster = ["--ray-address", "http://head:8265", "--out", "s3://bucket/runs"]
    args = build_parser().parse_args(["run", "--profile", "paper", "--epochs", "2", *cluster])
    params = RetrainParams(**params_from_args(args))
    assert (params.epochs, params.image_size, params.weights) == (2, 224, "imagenet")
    assert params.sweep.gpus_per_trial == 0.25
    quick = RetrainParams(**params_from_args(build_parser().parse_args(["run"])))
    assert (quick.weights, quick.folds, quick.data_url) == ("none", 3, None)
    assert quick.pairs()[-1] == ("scratch_cnn", "full") and len(quick.pairs()) == 9
    paper = RetrainParams(profile="paper", ray_address=cluster[1], out_url=cluster[3])
    assert paper.sweep_groups()["none"] == [("scratch_cnn", "full")]


@pytest.mark.usefixtures("prefect_server")
def test_flows_keep_their_urls_under_the_allowed_roots(tmp_path):
    """With ``braintl_allowed_roots`` set on the (real, temporary) Prefect server, a flow run
    whose URLs leave those roots fails before any work, naming the parameter and the
    variable; one whose URLs stay inside gets past the check, and so does any when the variable
    is unset and the run has no deployment."""
    allowed = tmp_path / "allowed"
    Variable.set(VARIABLE, [str(allowed)], overwrite=True)
    try:
        with pytest.raises(UserError, match=f"data_url=.*outside the allowed roots.*{VARIABLE}"):
            predict(data_url=str(tmp_path / "scans"), out_url=str(allowed / "runs"))
        with pytest.raises(UserError, match="csv_url=.*outside the allowed roots"):
            predict(str(allowed / "scans"), out_url=str(allowed), csv_url=str(tmp_path / "p.csv"))
        params = RetrainParams(data_url=str(allowed / "scans"), out_url=str(tmp_path / "runs"))
        with pytest.raises(UserError, match="out_url=.*outside the allowed roots"):
            retrain(params)
        assert not (tmp_path / "runs").exists()  # refused before any work
        with pytest.raises(UserError, match="no champion yet"):  # inside: past the check
            predict(data_url=str(allowed / "scans"), out_url=str(allowed / "runs"))
    finally:
        Variable.unset(VARIABLE)
    # Unset, a run without a deployment (``braintl run``) is not confined; a deployment's run
    # refuses to start (tests/test_deployments.py).
    with pytest.raises(UserError, match="no champion yet"):
        predict(data_url=str(tmp_path / "scans"), out_url=str(tmp_path / "runs"))
