"""The background checkpoint writer: what it stores is the state when ``write`` was called, in
order, and a write that fails is raised, not lost."""

from __future__ import annotations

import io

import pytest
import torch

from braintl.storage import StorageError, resolve
from braintl.training.checkpoint_writer import CheckpointWriter


def _stored(location) -> dict:
    return torch.load(io.BytesIO(location.read_bytes()), weights_only=True)


def test_stores_the_state_at_write_time_in_order(tmp_path):
    location = resolve(str(tmp_path / "checkpoint.pt"))
    state = torch.zeros(1000)
    with CheckpointWriter(location) as writer:
        writer.write({"epoch": 1, "state": state}, 1)
        state.add_(1)  # what Adam does to its tensors in the next epoch
        writer.write({"epoch": 2, "state": state}, 2)
        state.add_(1)
    stored = _stored(location)
    assert stored["epoch"] == 2
    assert torch.equal(stored["state"], torch.ones(1000))


def test_a_failed_write_is_raised(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    location = resolve(str(tmp_path / "a-file" / "checkpoint.pt"))
    with pytest.raises(StorageError, match="cannot write"), CheckpointWriter(location) as writer:
        writer.write({"epoch": 1}, 1)
