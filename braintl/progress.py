"""How far a run's counted stages are (the sweep's trials, the cross-validation folds), and the
few lines a person running it must see without ``-v`` (which run it is, whether it resumes one),
told to whoever listens in this process.

The flow reports; ``braintl run``, which runs the flow in its own process, listens and draws a
progress display. With no listener a report costs a list lookup. A deployment's worker has no
listener here: the Prefect UI's progress artifacts, updated at the same points, serve it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Protocol


class Listener(Protocol):
    def __call__(self, stage: str, done: int, total: int) -> None: ...

    def note(self, message: str) -> None: ...


_listeners: list[Listener] = []
_lock = threading.Lock()


def report(stage: str, done: int, total: int) -> None:
    """``done`` of ``total`` units of ``stage`` have ended (called from any thread)."""
    for listener in _current():
        listener(stage, done, total)


def note(message: str) -> None:
    """A line worth showing even when the flow's logs stay off the terminal."""
    for listener in _current():
        listener.note(message)


def _current() -> list[Listener]:
    with _lock:
        return list(_listeners)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener(stage, done, total)`` on every report and ``listener.note(message)`` on
    every note made inside this block."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)
