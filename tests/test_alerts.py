"""Someone hears about it: the automations of deployments/automations.yaml, applied with the
deployments by deployments/apply.py, post to the webhook named by the Prefect variable
braintl_alert_webhook when a nightly run fails and when a run keeps the champion. A real Prefect
server (its triggers and actions services fire the automations), process worker and HTTP server;
each test waits for the post itself, and prints how long after its cause it arrived."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

import numpy as np
import pytest
from prefect.client.schemas.actions import VariableUpdate
from prefect_services import (
    REPO,
    TINY,
    api_client,
    apply_deployments,
    run_checked,
    wait_for_final_state,
)

from braintl.challenge import CHALLENGE_FILE
from braintl.champion import ChampionRule, Scored, decide
from braintl.data.phantoms import write_phantom_dataset
from braintl.metrics import json_safe
from braintl.storage import resolve

# Alerts usually arrive within seconds; the bound only keeps a broken setup from hanging CI.
DELIVERY_BOUND_S = 120
AUTOMATIONS = ("braintl-nightly-failed", "braintl-champion-kept")


@pytest.mark.slow
def test_a_failed_nightly_run_posts_its_run_and_failure(prefect_stack, alert_webhook):
    """A night whose data has one label only fails in prepare with a UserError."""
    data = write_phantom_dataset(f"{prefect_stack.data_root}/one-label", {"yes": 6}, size=64)
    params = {**TINY, "data_url": data, "out_url": f"{prefect_stack.out_url}/one-label"}
    with api_client(prefect_stack.api_url) as client:
        nightly = client.read_deployment_by_name("retrain/nightly-retrain")
        run = client.create_flow_run_from_deployment(nightly.id, parameters={"params": params})
    final = wait_for_final_state(run.id, prefect_stack)
    assert final.state.is_failed(), final.state
    post = alert_webhook.wait_for(
        lambda body: body.get("flow_run_id") == f"prefect.flow-run.{run.id}", DELIVERY_BOUND_S
    )
    delay = (post.received - final.state.timestamp).total_seconds()
    print(f"alert {delay:.1f} s after the Failed state: {post.body['text']}")
    assert post.content_type == "application/json"
    body = post.body
    assert (body["alert"], body["event"]) == ("nightly-failed", "prefect.flow-run.Failed")
    assert (body["deployment"], body["flow_run"], body["state"]) == (
        "nightly-retrain",
        final.name,
        "Failed",
    )
    assert body["message"] == final.state.message
    assert "one-label" in body["message"] and "label" in body["message"].split("one-label")[1]
    assert final.name in body["text"] and body["message"] in body["text"]
    assert body["url"].endswith(f"/runs/flow-run/{run.id}")


def _record_kept_challenge(run_url: str) -> dict:
    """A challenge the champion won, as braintl.challenge records it in the run: the candidate
    ranks every test scan upside down."""
    y = np.repeat([0, 1], 8)
    champion = Scored(np.linspace(0.05, 0.95, 16), 0.5)
    candidate = Scored(champion.prob[::-1].copy(), 0.5)
    decision = decide(y, np.arange(16), candidate, champion, ChampionRule())
    assert not decision["promote"]
    decision = json_safe(
        decision
        | {
            "candidate": "night-2",
            "champion_before": "night-1",
            "champion": "night-1",
            "time": datetime.now(UTC).isoformat(),
        }
    )
    resolve(run_url).join(CHALLENGE_FILE).write_json(decision)
    return decision


def _kept_champion_post(stack, webhook, tmp_path):
    """Run the champion task in a flow run of its own process on a kept challenge; the
    decision, the output URL and the post that names that output."""
    out_url = str(tmp_path / "out")
    run_url = str(tmp_path / "out" / "runs" / "night-2")
    decision = _record_kept_challenge(run_url)
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**stack.env, "PYTHONPATH": pythonpath, "PREFECT_HOME": str(tmp_path / "prefect")}
    flow_script = str(REPO / "tests" / "champion_event_flow.py")
    run_checked([sys.executable, flow_script, run_url, out_url], env)
    post = webhook.wait_for(lambda body: body.get("out_url") == out_url, DELIVERY_BOUND_S)
    delay = (post.received - datetime.fromisoformat(post.body["occurred"])).total_seconds()
    print(f"alert {delay:.1f} s after the event: {post.body['text']}")
    return decision, out_url, post


@pytest.mark.slow
def test_a_kept_champion_posts_the_reason(prefect_stack, alert_webhook, tmp_path):
    decision, out_url, post = _kept_champion_post(prefect_stack, alert_webhook, tmp_path)
    body = post.body
    assert (body["alert"], body["event"]) == ("champion-kept", "braintl.champion.kept")
    assert body["reason"] == decision["reason"]
    assert body["reason"].startswith("kept champion: AUC may be worse")
    assert (body["candidate"], body["champion"]) == ("night-2", "night-1")
    assert body["evidence"]["auc"] == decision["evidence"]["auc"]
    assert body["evidence"]["n_images"] == 16
    assert decision["reason"] in body["text"] and out_url in body["text"]
    assert body["flow_run"] and body["url"]  # the flow run the event came from


@pytest.mark.slow
def test_applying_again_picks_up_a_changed_webhook_url(prefect_stack, alert_webhook, tmp_path):
    """The variable is read when the automations are applied; applying again replaces them,
    leaving one of each, and the next alert goes to the new URL."""
    changed = f"{alert_webhook.url}/changed"
    with api_client(prefect_stack.api_url) as client:
        client.update_variable(VariableUpdate(name="braintl_alert_webhook", value=changed))
    apply_deployments(prefect_stack.env)
    with api_client(prefect_stack.api_url) as client:
        for name in AUTOMATIONS:
            assert len(client.read_automations_by_name(name)) == 1, name
    _, _, post = _kept_champion_post(prefect_stack, alert_webhook, tmp_path)
    assert post.path == "/braintl-alerts/changed"
