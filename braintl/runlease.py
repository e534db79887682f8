"""A run's lease: while a process works on ``runs/<id>/`` it keeps renewing ``lease.json`` there.

A rerun after a crash resumes the unfinished run of the same data and settings; the lease tells
a crashed run (its lease expired) from one still at work (a second run of the same settings
started meanwhile, which must then start a run of its own instead of writing into this one).

Every write of the lease is conditional (see :mod:`braintl.conditional`): it is created only if
absent, taken over only if still the expired version that was read, renewed only if still the
version its owner wrote last. So of two processes taking one lease exactly one wins, and an
owner whose lease lapsed and was taken over learns it at its next renewal or :func:`confirm`,
before writing results, instead of writing over the new owner's run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from braintl import conditional
from braintl.errors import UserError
from braintl.storage import Location, StorageError, resolve

LEASE = "lease.json"
# How long a lease outlives its last renewal; renewed four times as often. Tests shorten it.
SECONDS_ENV = "BRAINTL_RUN_LEASE_S"
DEFAULT_SECONDS = 60.0
log = logging.getLogger(__name__)


class LeaseHeld(Exception):
    """Another owner holds the run's lease and renews it: the run is not free to take."""


class LeaseLost(UserError):
    """This process's lease was taken over by another run: it must write nothing more there."""


@dataclass
class Lease:
    """A lease this process holds: the version it wrote last proves it is still the owner."""

    run: Location
    owner: str
    version: str
    until: float
    warning: str | None = None  # why conditional writes cannot be trusted here, if they cannot
    lost: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def location(self) -> Location:
        return self.run.join(LEASE)


_held: dict[str, tuple[threading.Event, threading.Thread, Lease]] = {}


def lease_seconds() -> float:
    return float(os.environ.get(SECONDS_ENV) or DEFAULT_SECONDS)


def _document(owner: str) -> tuple[bytes, float]:
    until = time.time() + lease_seconds()
    return json.dumps({"owner": owner, "until": until}, sort_keys=True).encode(), until


def _parse(location: Location, current: conditional.Versioned | None) -> dict | None:
    """The lease document ``{"owner", "until"}``; None when absent or unreadable. An unreadable
    one (a torn or hand-edited file) is reported and counts as expired, so it never blocks
    every later run: the next taker replaces it, conditionally on the version it read."""
    if current is None:
        return None
    try:
        held = json.loads(current.data)
        if isinstance(held["owner"], str) and isinstance(held["until"], int | float):
            return held
        raise TypeError("owner must be text and until a number")
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("%s: unreadable lease (%s); treated as expired", location.url, exc)
        return None


def holder(run: Location) -> str | None:
    """The owner holding the run's lease (renewed recently), or None."""
    location = run.join(LEASE)
    held = _parse(location, conditional.read(location))
    return held["owner"] if held and held["until"] > time.time() else None


def take(run_url: str, owner: str) -> Lease:
    """Take the lease of ``run_url`` for ``owner``: create it, take over an expired one, or take
    back one ``owner`` held before (a retried flow run). Raises :class:`LeaseHeld` when another
    owner's lease is live, or when others changed it under three attempts in a row."""
    run = resolve(run_url)
    location = run.join(LEASE)
    warning = conditional.unsupported(location)
    for _ in range(3):
        current = conditional.read(location)
        held = _parse(location, current)
        if held is not None and held["owner"] != owner and held["until"] > time.time():
            raise LeaseHeld(f"{location.url}: held by {held['owner']} until {held['until']}")
        document, until = _document(owner)
        try:
            version = conditional.write(location, document, current and current.version)
        except conditional.ConditionFailed:
            continue  # another process wrote it between our read and write: look again
        return Lease(run, owner, version, until, warning)
    raise LeaseHeld(f"{location.url}: taken by others under three attempts in a row")


def renew(lease: Lease) -> None:
    """Extend ``lease`` if it is still the version its owner wrote last; else mark it lost and
    raise :class:`LeaseLost`. The read before the write also catches a takeover on a server
    that ignores conditions (best effort there)."""
    with lease.lock:
        if lease.lost is None:
            current = conditional.read(lease.location)
            document, until = _document(lease.owner)
            try:
                if current is None or current.version != lease.version:
                    raise conditional.ConditionFailed(lease.location.url)
                lease.version = conditional.write(lease.location, document, lease.version)
                lease.until = until
            except conditional.ConditionFailed:
                held = _parse(lease.location, current)
                owner = held["owner"] if held else "nobody (removed or unreadable)"
                lease.lost = (
                    f"{lease.run.url}: this run ({lease.owner}) lost its lease, now held by "
                    f"{owner}; its own lease had lapsed (not renewed for {lease_seconds():g} s, "
                    "e.g. storage unreachable). It writes nothing more there; the other run "
                    "goes on, and a rerun after it resumes or skips as usual."
                )
        if lease.lost is not None:
            raise LeaseLost(lease.lost)


def hold(run_url: str, owner: str) -> Lease:
    """:func:`take` the lease of ``run_url`` and renew it in the background until
    :func:`release`; a process that dies stops renewing, and the lease expires."""
    lease = take(run_url, owner)
    stop = threading.Event()

    def renewing() -> None:
        while not stop.wait(lease_seconds() / 4):
            try:
                renew(lease)
            except StorageError:  # storage down: keep trying; confirm() tells the run
                continue
            except LeaseLost:
                return

    renewer = threading.Thread(target=renewing, name=f"lease-{owner}", daemon=True)
    _stop(owner)  # a retried flow run took its run back: the first attempt's renewals end
    renewer.start()
    _held[owner] = (stop, renewer, lease)
    return lease


def confirm(run_url: str) -> None:
    """Renew now the lease this process holds on ``run_url``; call it before writing results.

    Raises :class:`LeaseLost` when another run took it over, or when this process holds none
    (a stage meant for a leased run called outside one), and StorageError during an outage
    (the caller's retries try again). A renewed lease stays this run's for the lease's length."""
    run = resolve(run_url)
    lease = next((lease for _, _, lease in _held.values() if lease.run.url == run.url), None)
    if lease is None:
        raise LeaseLost(f"{run.url}: this process holds no lease on this run; not writing")
    renew(lease)


def _stop(owner: str) -> Lease | None:
    """End the renewals of ``owner``'s lease; the lease it renewed, if any."""
    if owner not in _held:
        return None
    stop, renewer, lease = _held.pop(owner)
    stop.set()
    renewer.join(timeout=30)
    return lease


def release(owner: str) -> None:
    """Stop renewing and remove the lease, if still ``owner``'s, so a rerun may resume at once."""
    lease = _stop(owner)  # no renewal after the removal
    if lease is not None and lease.lost is None:
        with contextlib.suppress(Exception):  # storage down or taken: it expires anyway
            conditional.delete(lease.location, lease.version)
