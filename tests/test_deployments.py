"""The deployments of ``deployments/prefect.yaml`` on a real Prefect server with a real process
worker: an ad-hoc run triggered through the API as the UI does, its results in a real S3 server
and its champion event on the server; the nightly schedule read back, its concurrency limit
keeping two nights apart, the output's limit keeping a nightly and an ad-hoc run on one
output apart, and deployed runs confined to the roots apply.py sets (refused when unset)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect_services import (
    APPLY,
    REPO,
    TIMEZONE,
    TINY,
    api_client,
    apply_deployments,
    wait_for_events,
    wait_for_final_state,
)

from braintl.storage import resolve
from flows.roots import VARIABLE as ROOTS


@pytest.mark.slow
def test_adhoc_run_through_the_api_completes_and_writes_to_s3(prefect_stack):
    params = {**TINY, "out_url": prefect_stack.out_url, "seed": 1}
    with api_client(prefect_stack.api_url) as client:
        deployment = client.read_deployment_by_name("retrain/adhoc-retrain")
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"params": params})
    final = wait_for_final_state(run.id, prefect_stack)
    assert final.state.is_completed(), final.state
    assert final.parameters["params"]["seed"] == 1
    latest = resolve(prefect_stack.out_url).join("latest.json").read_json()
    run_dir = resolve(latest["run_url"])
    assert run_dir.join("results.json").read_json()["models"]
    assert "scratch_cnn/full" in run_dir.join("table.md").read_bytes().decode()
    assert run_dir.join("config.json").read_json()["params"]["seed"] == 1
    # The champion task's event (what the champion-kept alert fires on), from the worker's run.
    champion_events = EventFilter(
        event=EventNameFilter(prefix=["braintl.champion."]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{run.id}"]),
    )
    (event,) = wait_for_events(champion_events, prefect_stack)
    verdict = "promoted" if latest["champion"]["promote"] else "kept"
    assert event.event == f"braintl.champion.{verdict}"
    assert event.resource.id == f"braintl.champion.{prefect_stack.out_url}"
    assert event.payload["candidate"] == latest["run_id"]
    assert event.payload["reason"] == latest["champion"]["reason"]


def test_nightly_schedule_and_concurrency_read_back(prefect_stack):
    with api_client(prefect_stack.api_url) as client:
        nightly = client.read_deployment_by_name("retrain/nightly-retrain")
        names = {d.name for d in client.read_deployments()}
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", TIMEZONE)
    assert schedule.active
    assert nightly.global_concurrency_limit.limit == 1
    assert nightly.parameters["params"]["out_url"] == prefect_stack.out_url
    assert names == {"nightly-retrain", "adhoc-retrain", "cluster-sweep", "predict-folder"}


@pytest.mark.slow
def test_two_nightly_runs_never_overlap(prefect_stack):
    """Started together (a late night meeting the next one), the second run waits for a slot."""
    with api_client(prefect_stack.api_url) as client:
        nightly = client.read_deployment_by_name("retrain/nightly-retrain")
        runs = [client.create_flow_run_from_deployment(nightly.id) for _ in range(2)]
    finals = [wait_for_final_state(run.id, prefect_stack) for run in runs]
    assert all(final.state.is_completed() for final in finals), [f.state for f in finals]
    first, second = sorted(finals, key=lambda final: final.start_time)
    assert second.start_time >= first.end_time


@pytest.mark.slow
def test_nightly_and_adhoc_runs_on_one_output_take_turns(prefect_stack):
    """The output's concurrency limit is shared across deployments: started together with the
    same settings, one run trains and the other waits, then finds nothing changed."""
    params = {**TINY, "out_url": f"{prefect_stack.out_url}/shared"}
    with api_client(prefect_stack.api_url) as client:
        runs = [
            client.create_flow_run_from_deployment(
                client.read_deployment_by_name(f"retrain/{name}").id, parameters={"params": params}
            )
            for name in ("nightly-retrain", "adhoc-retrain")
        ]
    finals = [wait_for_final_state(run.id, prefect_stack) for run in runs]
    assert sorted(final.state.name for final in finals) == ["Completed", "Nothing changed"]
    runs_dir = resolve(params["out_url"]).join("runs")
    assert len(runs_dir.fs.ls(runs_dir.path)) == 1  # one run id


@pytest.mark.parametrize("kind", ["kubernetes", "docker"])
def test_gpu_work_pool_templates_are_accepted_by_the_server(prefect_stack, kind):
    """The server rejects a base job template whose placeholders name undeclared variables;
    the GPU variables must be declared and reach the job configuration."""
    template = json.loads((REPO / "deployments" / "work-pools" / f"{kind}.json").read_text())
    with api_client(prefect_stack.api_url) as client:
        client.create_work_pool(
            WorkPoolCreate(name=f"braintl-{kind}", type=kind, base_job_template=template)
        )
        pool = client.read_work_pool(f"braintl-{kind}")
    gpus = {"kubernetes": "gpu_limit", "docker": "gpu_count"}[kind]
    assert gpus in pool.base_job_template["variables"]["properties"]
    assert "{{ " + gpus + " }}" in json.dumps(pool.base_job_template["job_configuration"])


def test_apply_sets_the_allowed_roots_and_a_deployed_run_without_them_refuses_to_start(
    prefect_stack,
):
    """apply.py (run by the stack) set ``braintl_allowed_roots`` to the folders or buckets of
    the URLs it deployed; with the variable deleted, a deployment's run fails before any work,
    naming the variable and how to set it; applying again sets it back; a chosen list
    (``--allowed-roots``) replaces it and is kept."""
    deployed = [prefect_stack.data_root, prefect_stack.out_url]  # braintl_data_url, out_url
    out = resolve(f"{prefect_stack.out_url}/unconfined")
    with api_client(prefect_stack.api_url) as client:
        assert client.read_variable_by_name(ROOTS).value == deployed
        client.delete_variable_by_name(ROOTS)
        try:
            adhoc = client.read_deployment_by_name("retrain/adhoc-retrain")
            params = {**TINY, "out_url": out.url}
            run = client.create_flow_run_from_deployment(adhoc.id, parameters={"params": params})
            final = wait_for_final_state(run.id, prefect_stack)
        finally:
            apply_deployments(prefect_stack.env)
        assert client.read_variable_by_name(ROOTS).value == deployed
    assert final.state.is_failed(), final.state
    message = final.state.message
    assert f"the Prefect variable {ROOTS} is unset" in message, message
    assert f"prefect variable set {ROOTS}" in message and "deployments/apply.py" in message
    assert not out.exists()  # refused before any work
    apply = importlib.util.spec_from_file_location("apply", APPLY)
    script = importlib.util.module_from_spec(apply)
    apply.loader.exec_module(script)
    with api_client(prefect_stack.api_url) as client:
        try:  # `apply.py --allowed-roots URL ...` (without redeploying: one apply is enough)
            assert script.set_allowed_roots([prefect_stack.out_url]) == [prefect_stack.out_url]
            assert client.read_variable_by_name(ROOTS).value == [prefect_stack.out_url]
            assert script.set_allowed_roots(None) == [prefect_stack.out_url]  # a set one is kept
        finally:
            script.set_allowed_roots(deployed)
