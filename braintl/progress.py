"""How far a run's counted stages are (the sweep's trials, the cross-validation folds), told to
whoever listens in this process.

The flow reports; ``braintl run``, which runs the flow in its own process, listens and draws a
progress display. With no listener a report costs a list lookup. A deployment's worker has no
listener here: the Prefect UI's progress artifacts, updated at the same points, serve it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

Listener = Callable[[str, int, int], None]

_listeners: list[Listener] = []
_lock = threading.Lock()


def report(stage: str, done: int, total: int) -> None:
    """``done`` of ``total`` units of ``stage`` have ended (called from any thread)."""
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(stage, done, total)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener(stage, done, total)`` on every report made inside this block."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)
