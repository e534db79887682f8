"""``braintl run``'s progress display: one bar per counted stage on a terminal, plain lines
where the output is a file, a pipe or CI's log (no carriage returns or escape codes there)."""

from __future__ import annotations

import os
import threading
import time
from typing import TextIO

from tqdm import tqdm


def drawable(stream: TextIO) -> bool:
    """A terminal with a width. A pseudo-terminal of width 0 (script(1) without a terminal,
    some CI runners) shows no bar at all: plain lines there."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (OSError, ValueError):  # no file descriptor (io.UnsupportedOperation), or closed
        return False


class ProgressDisplay:
    """A :mod:`braintl.progress` listener: trials and folds done out of their total, with the
    time since the display started."""

    def __init__(self, stream: TextIO, terminal: bool | None = None):
        self.stream = stream
        self.terminal = drawable(stream) if terminal is None else terminal
        self.started = time.monotonic()
        self.bars: dict[str, tqdm] = {}
        self.shown: dict[str, tuple[int, int]] = {}
        self.lock = threading.Lock()  # reports come from the flow's task threads

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self.lock:
            if self.shown.get(stage) == (done, total):
                return
            self.shown[stage] = (done, total)
            if self.terminal:
                self._draw(stage, done, total)
            else:
                # Not print(): inside a flow run, Prefect turns print() into a log record.
                elapsed = time.monotonic() - self.started
                self.stream.write(f"[{elapsed:5.0f} s] {stage}: {done}/{total}\n")
                self.stream.flush()

    def _draw(self, stage: str, done: int, total: int) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(
                total=total,
                desc=stage,
                file=self.stream,
                position=len(self.bars),
                bar_format="{desc}: {n}/{total} |{bar}| {elapsed}",
                dynamic_ncols=True,
            )
        bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        with self.lock:
            for bar in self.bars.values():
                bar.close()
