"""A sweep's trial table: braintl's own JSON record of every planned trial, the only sweep
state that a resume reads from storage.

Ray Tune keeps its experiment state as pickles (``tuner.pkl``, ``error.pkl``, cloudpickled
values inside ``experiment_state-*.json``); restoring it from a shared bucket would run
whatever a bucket writer put there. So Tune's state stays in a private folder of the process
running the sweep, and a resume rebuilds the sweep from this table (finished trials keep their
results) and the trials' weights-only checkpoints (unfinished ones continue from there). A
table that is not what braintl writes is ignored with a warning: the sweep starts over, its
trials still continuing from their checkpoints.

The table is one object, rewritten whole, so its size grows with the sweep; writing it at each
trial's end made N ends cost O(N²) bytes (39 ms a write at 1 000 trials). A trial's end (or
error, or restart) must still reach storage at once, or a crash right after it would rerun the
trial. So each of those events writes only that trial's entry, one small object of its own in
the table's journal (``<table>.journal/<trial id>.json``, O(1) whatever N; S3 has no append,
hence one object a trial rather than one growing log), and the whole table is written at most
every few seconds and at the sweep's end. :func:`read` lays the journal over the table, the
entry with the higher ``version`` winning; :meth:`TrialTable.settle` writes the whole table and
then deletes the journal it now covers, so a finished sweep's folder holds the table alone.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from braintl.storage import Location, guarded

FORMAT = "braintl-sweep-trials/1"
JOURNAL_FORMAT = "braintl-sweep-trial/1"
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
    # Changes recorded, across attempts: of the table's copy and the journal's, the higher wins.
    version: int = Field(0, ge=0)


class JournalEntry(BaseModel):
    """One trial's entry as its last end, error or restart left it (the file name is its id)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[JOURNAL_FORMAT] = JOURNAL_FORMAT
    trial: Trial


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

    def write_trial(self, location: Location, trial_id: str) -> None:
        """One trial's entry into the journal of the table at ``location``: O(1) bytes."""
        entry = JournalEntry(trial=self.trials[trial_id])
        journal(location).join(f"{trial_id}.json").write_bytes(entry.model_dump_json().encode())

    def settle(self, location: Location) -> None:
        """The whole table, then its journal deleted: the table now holds every entry."""
        self.write(location)
        folder = journal(location)
        if folder.exists():
            guarded(folder.url, folder.fs.rm, folder.path, True)


def journal(location: Location) -> Location:
    """The folder of per-trial entries beside the table at ``location``, until it is settled."""
    return location.parent.join(posixpath.basename(location.path) + ".journal")


def read(location: Location) -> TrialTable | None:
    """The table at ``location`` with its journal laid over it; None when there is no table or
    it is not braintl's (logged). A journal entry that is not braintl's is ignored (logged)."""
    table = _read_table(location)
    if table is not None:
        _merge_journal(table, journal(location))
    return table


def _read_table(location: Location) -> TrialTable | None:
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


def _merge_journal(table: TrialTable, folder: Location) -> None:
    if not folder.exists():
        return
    found = guarded(folder.url, folder.fs.find, folder.path)
    # Only entries: a local write's temporary file (".<name>.<random>.tmp") is not one yet.
    paths = [p for p in found if p.endswith(".json") and not posixpath.basename(p).startswith(".")]
    if not paths:
        return
    for path, data in guarded(folder.url, folder.fs.cat, paths).items():
        trial_id = posixpath.basename(path).removesuffix(".json")
        try:
            entry = JournalEntry.model_validate_json(data).trial
        except (ValidationError, ValueError) as exc:
            reason = str(exc).splitlines()[0][:200]
            log.warning("%s: not a braintl journal entry (%s); ignored", path, reason)
            continue
        if trial_id not in table.trials:
            log.warning("%s: no trial %r in the table's plan; ignored", path, trial_id)
        elif entry.version >= table.trials[trial_id].version:
            table.trials[trial_id] = entry
