"""A sweep's trial table: braintl's own JSON record of every planned trial, the only sweep
state that a resume reads from storage.

Ray Tune keeps its experiment state as pickles (``tuner.pkl``, ``error.pkl``, cloudpickled
values inside ``experiment_state-*.json``); restoring it from a shared bucket would run
whatever a bucket writer put there. So Tune's state stays in a private folder of the process
running the sweep, and a resume rebuilds the sweep from this table (finished trials keep their
results) and the trials' weights-only checkpoints (unfinished ones continue from there). A
table that is not what braintl writes is ignored with a warning: the sweep starts over, its
trials still continuing from their checkpoints.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from braintl.storage import Location

FORMAT = "braintl-sweep-trials/1"
log = logging.getLogger(__name__)


class Report(BaseModel):
    """One epoch a trial reported, and in which attempt of the sweep (1: the first run)."""

    model_config = ConfigDict(extra="forbid")

    epoch: int = Field(ge=1)
    val_auc: float | None
    val_loss: float | None
    train_loss: float | None
    attempt: int = Field(ge=1)


class Trial(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["pending", "running", "finished", "error"] = "pending"
    error: str | None = None
    restarts: int = Field(0, ge=0, description="Tune restarts after a lost worker")
    reports: list[Report] = []  # in the order received; an epoch may repeat after a restart
    # Where and when its last report came from: node, the GPU ids Ray assigned (possibly
    # shared), when the attempt started and when it reported.
    placement: dict[str, str | float | list[str] | None] = {}


class TrialTable(BaseModel):
    """The planned trials (id → choices) and what each has done so far."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[FORMAT] = FORMAT
    attempt: int = Field(1, ge=1)
    plan: dict[str, dict[str, str | float | int]]
    trials: dict[str, Trial]

    @classmethod
    def new(cls, plan: dict[str, dict]) -> TrialTable:
        return cls(plan=plan, trials={trial_id: Trial() for trial_id in plan})

    def unfinished(self) -> list[str]:
        """Trials to run: never started, interrupted or errored (these resume)."""
        return [i for i in self.plan if self.trials[i].status != "finished"]

    def write(self, location: Location) -> None:
        location.write_bytes(self.model_dump_json(indent=1).encode())


def read(location: Location) -> TrialTable | None:
    """The table at ``location``; None when there is none or it is not braintl's (logged)."""
    if not location.exists():
        return None
    try:
        table = TrialTable.model_validate_json(location.read_bytes())
    except (ValidationError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200]
        log.warning(
            "%s: not a braintl trial table (%s); ignored, the sweep starts over",
            location.url,
            reason,
        )
        return None
    if set(table.trials) != set(table.plan):
        log.warning(
            "%s: trials do not match the plan; ignored, the sweep starts over", location.url
        )
        return None
    return table
