"""Contenders started at one moment, for the race tests of leases and the champion."""

from __future__ import annotations

import threading


def race(contenders: int, attempt) -> list:
    """Start ``attempt(i)`` in ``contenders`` threads at once; their results (exceptions too)."""
    barrier = threading.Barrier(contenders)
    outcomes: list = [None] * contenders

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = attempt(i)
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes
