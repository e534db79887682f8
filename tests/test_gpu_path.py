"""Decode once, share tensors, GPU use: the node-local tensor copy, memory maps, batches on the
training device, torch.compile, and the GPU benchmark script's logic at a tiny size on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import REPO, run_python

from braintl.data.tensors import NODE_CACHE_ENV, TensorSet
from braintl.storage import resolve
from braintl.training import TrainConfig, train
from braintl.training import device as device_mod
from braintl.training.device import BatchSource, first_epoch_overhead, fits_on_device

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")
TINY = {"epochs": 1, "batch_size": 8, "seed": 0, "num_threads": 1}


def _same(a: TensorSet, b: TensorSet) -> None:
    for name in ("images", "labels", "groups", "augmented"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.split.to_json() == b.split.to_json() and a.meta == b.meta


def _node_copies(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def test_local_cache_is_memory_mapped_copy_on_write(tensors_url):
    tensors = TensorSet.load(tensors_url)
    images = tensors.images
    assert isinstance(images.base, np.memmap)
    assert Path(images.base.filename) == Path(resolve(tensors_url).join("images.npy").path)
    before = images[0, 0, 0, 0]
    images[0, 0, 0, 0] = before + 1  # this process's view only
    assert TensorSet.load(tensors_url).images[0, 0, 0, 0] == before


def test_remote_cache_downloads_once_per_node(tensors_url, s3_bucket, tmp_path, monkeypatch):
    """Two loads (one in-process, two racing processes) share one download into the node cache,
    memory-map it, and train to the same result as the local cache."""
    node = tmp_path / "node"
    monkeypatch.setenv(NODE_CACHE_ENV, str(node))
    local = TensorSet.load(tensors_url)
    remote_url = f"{s3_bucket}/cache/abc123"
    local.save(remote_url)

    first = TensorSet.load(remote_url)
    assert _node_copies(node) == [next(iter(_node_copies(node)))]
    copy = node / _node_copies(node)[0]
    assert copy.name.startswith("abc123-")
    assert Path(first.images.base.filename) == copy / "images.npy"
    _same(first, local)

    # With the arrays gone from S3, a second load can only succeed from the node copy.
    remote = resolve(remote_url)
    remote.fs.rm(remote.join("images.npy").path)
    second = TensorSet.load(remote_url)
    _same(second, local)
    assert _node_copies(node) == [copy.name]

    config = TrainConfig(**TINY)
    train_idx, val_idx = local.fold(0)
    ours = train(second, train_idx, val_idx, config).history
    theirs = train(local, train_idx, val_idx, config).history
    assert [r["train_loss"] for r in ours] == [r["train_loss"] for r in theirs]
    assert [r["val_auc"] for r in ours] == [r["val_auc"] for r in theirs]


def test_racing_processes_share_one_download(tensors_url, s3_bucket, tmp_path):
    """Processes loading a remote cache at once: one downloads, the others wait for it."""
    node = tmp_path / "node"
    remote_url = f"{s3_bucket}/cache/race"
    TensorSet.load(tensors_url).save(remote_url)
    script = (
        "import hashlib, sys; from braintl.data.tensors import TensorSet; "
        "t = TensorSet.load(sys.argv[1]); "
        "print(t.images.base.filename, hashlib.sha256(t.images.tobytes()).hexdigest())"
    )
    env = {**os.environ, NODE_CACHE_ENV: str(node), "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, remote_url], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outputs) == 1  # same file, same pixels
    assert len(_node_copies(node)) == 1  # no second copy, no partial download left over
    expected = TensorSet.load(tensors_url).images
    import hashlib

    assert outputs.pop().split()[1] == hashlib.sha256(expected.tobytes()).hexdigest()


def test_batches_come_from_the_training_device(tensors_url):
    images = TensorSet.load(tensors_url).images
    cpu = torch.device("cpu")
    assert not fits_on_device(images.nbytes, cpu)
    index = torch.tensor([5, 0, 7, 3])
    expected = torch.from_numpy(images[index.numpy()])
    streamed = BatchSource(images, cpu)
    assert not streamed.resident and torch.equal(streamed.take(index), expected)
    # The gather used when the set sits on the GPU, run here on the CPU.
    resident = BatchSource(images, cpu, resident=True)
    batch = resident.take(index)
    assert torch.equal(batch, expected)
    assert batch.is_contiguous(memory_format=torch.channels_last)


@CUDA
def test_training_set_sits_on_the_gpu_when_it_fits(tensors_url):
    images = TensorSet.load(tensors_url).images
    gpu = torch.device("cuda")
    source = BatchSource(images, gpu)
    assert source.resident and source.images.is_cuda
    batch = source.take(torch.tensor([1, 2]))
    assert batch.is_cuda and batch.is_contiguous(memory_format=torch.channels_last)
    streamed = BatchSource(images, gpu, resident=False).take(torch.tensor([1, 2]))
    assert streamed.is_cuda and torch.equal(streamed, batch)
    assert not fits_on_device(10**15, gpu)


def test_first_epoch_overhead():
    assert first_epoch_overhead([{"seconds": 3.0}]) is None
    seconds = [9.0, 2.0, 1.0, 3.0]
    assert first_epoch_overhead([{"seconds": s} for s in seconds]) == 7.0
    assert first_epoch_overhead([{"seconds": 1.0}, {"seconds": 2.0}]) == 0.0


def test_compile_records_its_first_epoch_overhead(tensors_url, monkeypatch):
    """The loop's torch.compile path (Dynamo tracing the training forward); inductor's C++
    code generation would take minutes on two CPU cores, so this test uses the eager backend."""
    monkeypatch.setattr(device_mod, "COMPILE_BACKEND", "eager")
    tensors = TensorSet.load(tensors_url)
    train_idx, val_idx = tensors.fold(0)
    plain = train(tensors, train_idx, val_idx, TrainConfig(**{**TINY, "epochs": 2}))
    assert plain.compile_seconds is None
    result = train(
        tensors, train_idx, val_idx, TrainConfig(**{**TINY, "epochs": 2, "compile": True})
    )
    assert result.compile_seconds is not None and result.compile_seconds >= 0
    assert result.to_dict()["compile_seconds"] == result.compile_seconds
    assert all(np.isfinite(r["train_loss"]) for r in result.history)
    # Same weights in, same state dict keys out: the module itself is never replaced.
    assert result.model.state_dict().keys() == plain.model.state_dict().keys()


@CUDA
def test_bf16_autocast_and_channels_last_on_cuda():
    gpu = torch.device("cuda")
    model = device_mod.prepare_model(torch.nn.Conv2d(3, 4, 3), gpu)
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    with device_mod.autocast(gpu):
        out = model(torch.zeros(2, 3, 8, 8, device=gpu))
    assert out.dtype == torch.bfloat16


def test_gpu_check_tiny_on_cpu(real_data, tmp_path):
    """The GPU script end to end at a tiny size: throughput of every backbone in both modes,
    then every family × strategy × fold on the real scans, JSON and table written."""
    out = tmp_path / "out"
    proc = run_python(
        ["benchmarks/gpu_check.py", "--tiny", "--data", str(real_data)]
        + ["--out", str(out), "--workers", "1"],
        cwd=REPO,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert (
        report["weights"]["used"] == "none" and "no ImageNet weights" in report["weights"]["note"]
    )
    modes = {(r["model"], r["mode"]) for r in report["throughput"]}
    families = ("mobilenet_v2", "vgg16", "resnet50", "xception", "scratch_cnn")
    assert modes == {(m, mode) for m in families for mode in ("fp32_nchw", "bf16_channels_last")}
    assert all(r["images_per_s"] > 0 for r in report["throughput"])
    protocol = report["protocol"]
    runs = {(r["backbone"], r["strategy"], r["fold"]) for r in protocol["runs"]}
    pairs = [(m, s) for m in families[:4] for s in ("frozen", "finetune")] + [
        ("scratch_cnn", "full")
    ]
    assert runs == {(b, s, k) for b, s in pairs for k in range(2)}
    assert all(0 <= r["test"]["auc"] <= 1 for r in protocol["runs"])
    assert protocol["wall_seconds"] > 0 and protocol["image_size"] == 32
    assert protocol["gpu_utilisation"]["samples"] == 0  # no nvidia-smi on a CPU machine
    table = (out / "gpu_check.md").read_text()
    assert "fp32_nchw" in table and "vgg16" in table and "wall" in table
