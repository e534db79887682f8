"""One small retrain run on phantoms, shared by the model tests (publish, predict, warm start,
predict flow): the real flow under a temporary Prefect server with real local Ray, run once per
test session whichever of those modules asks first (each module's fixture calls
:func:`small_run`, which remembers its run; a fixture defined here would run once per module)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from support import small_params
from temporary_prefect import run_retrain

from braintl.data.phantoms import write_phantom_dataset


@dataclass(frozen=True)
class SmallRun:
    data: Path  # phantoms: yes/ and no/, 16 each, 48 px
    out: Path  # the flow's out_url: runs/, cache/, latest.json
    record: dict  # what the flow returned (and latest.json holds)


_done: list[SmallRun] = []


def small_run(tmp_path_factory: pytest.TempPathFactory) -> SmallRun:
    if _done:
        return _done[0]
    root = tmp_path_factory.mktemp("small-run")
    data = root / "data"
    write_phantom_dataset(str(data), n_per_label={"yes": 16, "no": 16}, size=48, seed=0)
    state = run_retrain(small_params(data, root / "out"), root / "prefect")
    assert state.is_completed(), state.message
    _done.append(SmallRun(data, root / "out", state.result()))
    return _done[0]
