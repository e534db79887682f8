"""Which run a flow run works on: the interrupted run of the same key, or a new one.

The run's lease decides (see :mod:`braintl.runlease`): two flow runs that both find the same
interrupted run race for its lease, and exactly one resumes it; the other starts a run of its
own. A new run id is taken the same way, so no two flow runs ever share a run id.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from braintl import runlease
from braintl.results import unfinished_run
from braintl.storage import resolve


def new_run_id() -> str:
    """``<UTC time to the second>-<6 random hex digits>``: ids sort by the time runs began,
    which is the order ``latest.json`` moves in (see :func:`braintl.results.publish_latest`)."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def claim_run(out_url: str, run_key: str, owner: str) -> dict:
    """Hold the lease of the run ``owner`` works on under ``out_url`` (renewed until
    :func:`braintl.runlease.release`); returns ``{"run_id", "resumed", "warning"}``, the
    warning naming a storage server whose conditional writes cannot be trusted."""
    runs = resolve(out_url).join("runs")
    resumable = unfinished_run(out_url, run_key, owner)
    candidates = [resumable] if resumable else []
    for _ in range(3):
        run_id = candidates.pop() if candidates else new_run_id()
        try:
            lease = runlease.hold(runs.join(run_id).url, owner)
        except runlease.LeaseHeld:  # another flow run took it first
            continue
        return {"run_id": run_id, "resumed": run_id == resumable, "warning": lease.warning}
    raise runlease.LeaseHeld(f"{runs.url}: three run ids in a row were taken by others")
