"""A flow run, in a process of its own against the Prefect server in PREFECT_API_URL, of the
flow's champion task on a run whose challenge is recorded already (as a retried run finds it):
the task emits its event exactly as in a nightly run, without training a model.

    python tests/champion_event_flow.py RUN_URL OUT_URL
"""

import sys

from prefect import flow

from braintl.champion import ChampionRule
from tasks.champion import challenge_champion


@flow(name="champion-event")
def champion_event(run_url: str, out_url: str) -> dict:
    return challenge_champion(run_url, out_url, ChampionRule())


if __name__ == "__main__":
    champion_event(*sys.argv[1:3])
