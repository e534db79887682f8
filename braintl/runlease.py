"""A run's lease: while a process works on ``runs/<id>/`` it keeps renewing ``lease.json`` there.

A rerun after a crash resumes the unfinished run of the same data and settings; the lease tells
a crashed run (its lease expired) from one still at work (a second run of the same settings
started meanwhile, which must then start a run of its own instead of writing into this one).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from braintl.storage import Location, StorageError, resolve

LEASE = "lease.json"
# How long a lease outlives its last renewal; renewed four times as often. Tests shorten it.
SECONDS_ENV = "BRAINTL_RUN_LEASE_S"
DEFAULT_SECONDS = 60.0

_held: dict[str, tuple[threading.Event, threading.Thread, Location]] = {}


def lease_seconds() -> float:
    return float(os.environ.get(SECONDS_ENV) or DEFAULT_SECONDS)


def is_held(run: Location) -> bool:
    """True while another process holds the run's lease (renewed recently)."""
    lease = run.join(LEASE)
    try:
        return lease.exists() and lease.read_json()["until"] > time.time()
    except FileNotFoundError:  # released between the two calls
        return False


def hold(run_url: str, owner: str) -> None:
    """Take the lease of ``run_url`` for ``owner`` and renew it in the background until
    :func:`release`; a process that dies stops renewing, and the lease expires."""
    seconds = lease_seconds()
    lease = resolve(run_url).join(LEASE)
    lease.write_json({"owner": owner, "until": time.time() + seconds})
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(seconds / 4):
            # Storage down: the run's own writes report it; the lease may lapse meanwhile.
            with contextlib.suppress(StorageError):
                lease.write_json({"owner": owner, "until": time.time() + seconds})

    renewer = threading.Thread(target=renew, name=f"lease-{owner}", daemon=True)
    renewer.start()
    _held[owner] = (stop, renewer, lease)


def release(owner: str) -> None:
    """Stop renewing and remove the lease, so a rerun may resume the run at once."""
    if owner not in _held:
        return
    stop, renewer, lease = _held.pop(owner)
    stop.set()
    renewer.join(timeout=30)  # no renewal after the removal
    with contextlib.suppress(Exception):  # gone already, or storage is down: it expires anyway
        lease.fs.rm(lease.path)
