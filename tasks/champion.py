"""The champion stage: a completed run's model challenges the champion; the verdict becomes an
artifact and a Prefect event (``braintl.champion.promoted`` or ``braintl.champion.kept``), which
the ``braintl-champion-kept`` automation (deployments/automations.yaml) posts to the alert
webhook: a kept champion means last night's model is not in use."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from braintl import challenge
from braintl.champion import ChampionRule
from tasks.data import STORAGE_RETRIES


@task(name="challenge-champion", **STORAGE_RETRIES)
def challenge_champion(run_url: str, out_url: str, rule: ChampionRule) -> dict:
    """Promote the run's model when it is not worse than the champion (see
    :mod:`braintl.champion`); the decision and its evidence become the ``champion`` artifact
    and event."""
    decision = challenge.challenge(run_url, out_url, rule)
    create_markdown_artifact(
        challenge.to_markdown(decision),
        key="champion",
        description=decision["reason"].split(":", 1)[0],
    )
    announce(decision, out_url)
    return decision


def announce(decision: dict, out_url: str) -> None:
    """The decision as an event about the champion of ``out_url``; Prefect relates it to the
    flow run and deployment it came from."""
    fields = ("reason", "candidate", "champion_before", "champion")
    emit_event(
        event=f"braintl.champion.{'promoted' if decision['promote'] else 'kept'}",
        resource={
            "prefect.resource.id": f"braintl.champion.{out_url}",
            "prefect.resource.name": f"champion of {out_url}",
            "braintl.out-url": out_url,
        },
        payload={k: decision[k] for k in fields} | {"evidence": challenge.summary(decision)},
    )
