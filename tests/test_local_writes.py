"""Local files braintl writes or trusts: whole-file writes from many threads at once, flushed
before they are renamed into place, and a node-local tensor cache only its user can touch."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from concurrency import race

from braintl.data.tensors import private_folder
from braintl.errors import UserError
from braintl.storage import resolve


def test_concurrent_writes_of_one_file_never_mix_or_collide(tmp_path):
    """Eight threads of one process write one path at once: each write succeeds, the file
    holds one whole write, and no temporary file is left behind. (Temporary names made of the
    process id alone collided here.)"""
    target = resolve(str(tmp_path / "out" / "latest.json"))
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    for _ in range(5):
        outcomes = race(8, lambda i: target.write_bytes(payloads[i]))
        assert outcomes == [None] * 8
        assert target.read_bytes() in payloads
    assert os.listdir(tmp_path / "out") == ["latest.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target.path).st_mode) == 0o666 & ~umask


def test_a_local_write_is_on_disk_before_it_is_renamed(tmp_path, monkeypatch):
    """fsync of the temporary file comes before the rename that publishes it, so a crash
    leaves the old or the new content, never an empty file under the final name."""
    calls = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), replace(a, b))[1])
    resolve(str(tmp_path / "a.json")).write_json({"run_id": "r1"})
    assert calls == ["fsync", "replace"]


def test_an_array_that_fails_to_serialise_leaves_the_old_file_whole(tmp_path):
    """A local array is streamed into its temporary file (no in-memory copy); when the stream
    fails part-way (here an object array, which braintl never pickles) the old file stays as
    it was and no temporary file is left."""
    target = resolve(str(tmp_path / "features.npy"))
    target.write_array(np.arange(6, dtype=np.float32))
    with pytest.raises(ValueError, match="allow_pickle"):
        target.write_array(np.array([{"a": 1}, None], dtype=object))
    assert np.array_equal(target.read_array(), np.arange(6, dtype=np.float32))
    assert os.listdir(tmp_path) == ["features.npy"]


def test_node_cache_folder_is_private(tmp_path):
    folder = tmp_path / "node" / "tensors"
    private_folder(str(folder))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    folder.chmod(0o755)  # an older braintl's, or a loose umask: tightened
    private_folder(str(folder))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_node_cache_refuses_a_planted_link(tmp_path):
    """Another local user creates the cache path first in a shared /tmp, as a link to a folder
    they control: refused, naming the fix."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (tmp_path / "tensors").symlink_to(theirs)
    with pytest.raises(UserError, match="not a folder .* BRAINTL_NODE_CACHE"):
        private_folder(str(tmp_path / "tensors"))


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")
def test_node_cache_refuses_a_folder_of_another_user(tmp_path):
    planted = tmp_path / "tensors"
    planted.mkdir(mode=0o777)
    os.chown(planted, 65534, 65534)
    with pytest.raises(UserError, match="owned by uid 65534"):
        private_folder(str(planted))
