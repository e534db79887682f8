"""One cross-validation fold: train, score on validation and the held-out test set, write.

Everything goes through storage URLs, so the same call runs in-process, as a Ray task on a
cluster worker (:func:`train_fold_on_ray`) or inside a Prefect task, and returns only a small
JSON record; model and full metrics (with per-image predictions) stay in storage. Ray is
imported only to run a fold on Ray, so :func:`train_fold` works where Ray is not installed.
"""

from __future__ import annotations

import io
import math
import time

import torch

from braintl import timeouts
from braintl.data.tensors import TensorSet
from braintl.metrics import json_safe
from braintl.storage import resolve
from braintl.training import TrainConfig, evaluate_split, train

# Ray reruns a fold whose worker died this many times (each resuming from its checkpoint).
WORKER_RETRIES = 2
WAIT_S = 1.0


def train_fold(tensors_url: str, config: dict, fold: int, out_url: str) -> dict:
    """Train ``TrainConfig(**config)`` on fold ``fold`` and write model.pt and metrics.json.

    A checkpoint under ``out_url`` is written as training goes (see ``checkpoint_interval_s``),
    so a retried fold resumes near where the failed attempt stopped instead of starting over;
    it is removed once the results are in.
    """
    started = time.perf_counter()
    out = resolve(out_url)
    train_config = TrainConfig(**config)
    tensors = TensorSet.load(tensors_url)
    train_idx, val_idx = tensors.fold(fold)
    result = train(
        tensors, train_idx, val_idx, train_config, checkpoint_url=out.join("checkpoint.pt")
    )
    evaluation = evaluate_split(result.model, tensors, val_idx, prefix=result.prefix)
    scores = evaluation.to_dict()
    metrics = json_safe(
        {
            **result.to_dict(),
            "fold": fold,
            "tensors_url": tensors_url,
            "sizes": {
                "train": len(train_idx),
                "val": len(val_idx),
                "test": len(evaluation.test_idx),
            },
            "evaluation": evaluation.to_dict(include_predictions=True),
        }
    )
    buffer = io.BytesIO()
    torch.save(result.model.state_dict(), buffer)
    model_loc, metrics_loc = out.join("model.pt"), out.join("metrics.json")
    model_loc.write_bytes(buffer.getvalue())
    metrics_loc.write_json(metrics)
    # Removed (it would double the storage) only now, with both stored: an attempt that failed
    # writing them left it for its retry, which returns the trained result without training.
    out.fs.rm(out.join("checkpoint.pt").path)
    return json_safe(
        {
            "backbone": train_config.backbone,
            "strategy": train_config.strategy,
            "fold": fold,
            "config": train_config.model_dump(),
            "val": scores["val"]["at_youden"],
            "test": scores["test"]["at_youden"] if scores["test"] else None,
            "threshold": evaluation.threshold,
            "best_epoch": result.best_epoch,
            "stopped_by": result.stopped_by,
            "history": result.history,
            "seconds": time.perf_counter() - started,
            "metrics_url": metrics_loc.url,
            "model_url": model_loc.url,
        }
    )


def train_fold_on_ray(
    tensors_url: str,
    config: dict,
    fold: int,
    out_url: str,
    num_cpus: float = 1,
    num_gpus: float = 0,
    ray_address: str | None = None,
    timeout_s: float | None = None,
) -> dict:
    """:func:`train_fold` as a Ray task holding ``num_cpus``/``num_gpus`` (fractions allowed),
    so Ray places it on a worker with those resources free; blocks until it finished.

    A lost worker (killed, preempted, out of memory) is Ray's to retry, up to
    ``WORKER_RETRIES`` times on another worker, resuming from the fold's checkpoint; errors
    the fold raises come back to the caller, whose retries decide. Past ``timeout_s`` (from
    submission: queueing counts) or when the wait is interrupted, the task is cancelled
    (force: its worker is killed), so a hung fold does not keep a GPU.
    """
    import ray

    from braintl.tuning import ensure_ray, threads_for

    checked = TrainConfig(**config)  # a bad configuration fails here, once, not in a worker
    ensure_ray(ray_address)
    config = {**config, "num_threads": threads_for(num_cpus)}  # this task's CPUs, not the sweep's
    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=WORKER_RETRIES)
    ref = remote(train_fold).remote(tensors_url, config, fold, out_url)
    deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
    try:
        # Short waits, not one blocking get: an interruption (a flow timeout) lands here.
        while not ray.wait([ref], timeout=min(WAIT_S, max(0.0, deadline - time.monotonic())))[0]:
            if time.monotonic() >= deadline:
                what = f"fold {fold} of {checked.backbone}/{checked.strategy} ({out_url})"
                raise timeouts.expired("cross-validation", timeout_s, what)
    except BaseException:
        # Only a task still running: cancelling one that had just failed aborted the driver
        # (Ray 2.60, "Tried to complete task that was not pending").
        ray.cancel(ref, force=True)
        raise
    return ray.get(ref)
