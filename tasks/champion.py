"""The champion stage: a completed run's model challenges the champion; the verdict becomes an
artifact."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from braintl import challenge
from braintl.champion import ChampionRule
from tasks.data import STORAGE_RETRIES


@task(name="challenge-champion", **STORAGE_RETRIES)
def challenge_champion(run_url: str, out_url: str, rule: ChampionRule) -> dict:
    """Promote the run's model when it is not worse than the champion (see
    :mod:`braintl.champion`); the decision and its evidence become the ``champion`` artifact."""
    decision = challenge.challenge(run_url, out_url, rule)
    create_markdown_artifact(
        challenge.to_markdown(decision),
        key="champion",
        description=decision["reason"].split(":", 1)[0],
    )
    return decision
