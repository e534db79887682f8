"""The hyperparameter sweep: one Ray Tune run over (backbone, strategy) × hyperparameters.

Search space: a grid over the (backbone, strategy) pairs, and for each pair ``num_samples``
random draws of learning rate (log-uniform), dropout, head units and batch size — so every pair
gets the same number of trials (``len(pairs) × num_samples`` in all) and none is crowded out by
luck. An ASHA scheduler compares all trials on validation AUC, reported every epoch, and stops
the weak ones early. A trial trains one fold of the tensor cache with the ordinary training
loop; its per-epoch checkpoint lives in storage next to the sweep, so a restored sweep resumes
interrupted trials where they stopped and never reruns finished ones.

Storage is any braintl URL (local folder or ``s3://``); S3 reaches Tune through pyarrow's
fsspec bridge with the same s3fs (and the same ``AWS_*`` environment) as the rest of braintl.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable

import pyarrow.fs
import ray
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from braintl.credentials import keep_out_of_ray_logs
from braintl.data.tensors import TensorSet
from braintl.errors import UserError
from braintl.metrics import json_safe
from braintl.storage import resolve
from braintl.training import TrainConfig, train

METRIC = "val_auc"
# Folds submitted at once (a run without a sweep) call ensure_ray from several threads.
_RAY_INIT = threading.Lock()
HYPERPARAMETERS = ("lr", "dropout", "head_units", "batch_size")


class SweepConfig(BaseModel):
    """The search space, the early-stopping schedule and the resources of each trial."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_samples: int = Field(8, ge=1, description="random draws per (backbone, strategy) pair")
    lr_min: float = Field(1e-4, gt=0, description="learning rate, log-uniform from here")
    lr_max: float = Field(3e-3, gt=0, description="... to here")
    dropout_choices: tuple[float, ...] = Field((0.1, 0.3), min_length=1)
    head_units_choices: tuple[int, ...] = Field((64, 256), min_length=1)
    batch_size_choices: tuple[int, ...] = Field((16, 32), min_length=1)
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: float = Field(2, gt=1, description="ASHA: 1/this of trials go on per rung")
    max_concurrent_trials: int = Field(2, ge=1)
    time_budget_s: float | None = Field(None, gt=0, description="None: no limit")
    cpus_per_trial: float = Field(1, gt=0, description="fractions allowed")
    gpus_per_trial: float = Field(0, ge=0, description="fractions share one GPU between trials")
    max_failures: int = Field(
        2, ge=0, description="restarts of a failed trial (a lost worker), from its checkpoint"
    )

    @model_validator(mode="after")
    def _ranges(self) -> SweepConfig:
        if self.lr_min > self.lr_max:
            raise ValueError(f"lr_min {self.lr_min} is above lr_max {self.lr_max}")
        if not all(0 <= d < 1 for d in self.dropout_choices):
            raise ValueError("dropout choices must lie in [0, 1)")
        if min(self.head_units_choices) < 1:
            raise ValueError("head units must be at least 1")
        if min(self.batch_size_choices) < 2:
            raise ValueError("batch sizes must be at least 2 (BatchNorm in the heads)")
        return self

    def param_space(self, pairs: list[tuple[str, str]]) -> dict:
        """Tune's search space: a grid over the pairs, random draws for the rest."""
        return {
            "model": tune.grid_search([f"{b}/{s}" for b, s in pairs]),
            "lr": tune.loguniform(self.lr_min, self.lr_max),
            "dropout": tune.choice(list(self.dropout_choices)),
            "head_units": tune.choice(list(self.head_units_choices)),
            "batch_size": tune.choice(list(self.batch_size_choices)),
        }


def threads_for(cpus: float) -> int:
    """Torch threads for a task holding ``cpus`` Ray CPUs: more would oversubscribe the node."""
    return max(1, math.floor(cpus))


RAY_TOKEN_SETUP_LOG = "ray._private.authentication.authentication_token_setup"


def _token_enabled_notice(record: logging.LogRecord) -> bool:
    """Drop Ray's warning that token authentication is on by default ("set RAY_AUTH_MODE=
    disabled to opt out"): on the local Ray braintl starts it is on, as it should be, and a
    first run's output should not read as a problem. Every other message passes."""
    return not record.getMessage().startswith("Token authentication is enabled")


def ensure_ray(address: str | None = None) -> None:
    """Connect to the Ray cluster at ``address``, or start a small, quiet local Ray once
    (once across threads too)."""
    keep_out_of_ray_logs()
    with _RAY_INIT:
        if not ray.is_initialized():
            _init_ray(address)


def _init_ray(address: str | None) -> None:
    options = {"log_to_driver": False, "logging_level": logging.WARNING}
    if not address:
        options |= {"num_cpus": os.cpu_count(), "include_dashboard": False}
        token_notice = logging.getLogger(RAY_TOKEN_SETUP_LOG)
        token_notice.addFilter(_token_enabled_notice)
        try:
            ray.init(ignore_reinit_error=True, **options)
        finally:
            token_notice.removeFilter(_token_enabled_notice)
        return
    try:
        ray.init(address=address, ignore_reinit_error=True, **options)
    except (ConnectionError, ray.exceptions.AuthenticationError) as error:
        raise UserError(
            f"cannot connect to the Ray cluster at {address} ({error}): check ray_address; a "
            "cluster with token authentication (Ray's default) needs RAY_AUTH_MODE=token and "
            "RAY_AUTH_TOKEN (`ray get-auth-token` on its head) in this process's environment"
        ) from error


@functools.lru_cache(maxsize=2)
def _tensors(url: str) -> TensorSet:
    """One load per worker process, however many trials it runs."""
    return TensorSet.load(url)


def trial_config(base: dict, trial: dict) -> TrainConfig:
    """The training configuration of one trial: ``base`` with the trial's choices on top."""
    backbone, strategy = trial["model"].split("/")
    chosen = {k: trial[k] for k in HYPERPARAMETERS}
    return TrainConfig(**{**base, "backbone": backbone, "strategy": strategy, **chosen})


def _trial(config: dict, tensors_url: str, fold: int, base: dict, checkpoints_url: str) -> None:
    """Train one trial, reporting validation AUC and loss to Tune after every epoch."""
    tensors = _tensors(tensors_url)
    train_idx, val_idx = tensors.fold(fold)
    checkpoint = resolve(checkpoints_url).join(f"{tune.get_context().get_trial_id()}.pt")
    # Where the trial ran and when: which node, which (possibly shared) GPU Ray assigned it.
    placement = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
        "started": time.time(),
    }

    def report(record: dict) -> None:
        tune.report(
            {
                "val_auc": record["val_auc"],
                "val_loss": record["val_loss"],
                "train_loss": record["train_loss"],
                "epoch": record["epoch"],
                **placement,
                "reported": time.time(),
            }
        )

    train(
        tensors,
        train_idx,
        val_idx,
        trial_config(base, config),
        callback=report,
        checkpoint_url=checkpoint,
    )


def _storage(url: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """Tune's (storage_path, storage_filesystem) for a braintl storage URL."""
    loc = resolve(url)
    if loc.protocol == "file":
        return loc.path, None
    return loc.path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(loc.fs))


def _short_error(error: BaseException | None) -> str | None:
    if error is None:
        return None
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def _finite(value) -> float:
    return float(value) if value is not None and math.isfinite(value) else -math.inf


class _TrialsEnded(tune.Callback):
    """Counts ended trials for ``run_sweep``'s ``on_trial_end``."""

    def __init__(self, total: int, notify: Callable[[int, int], None]):
        self.total, self.ended, self.notify = total, 0, notify

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._count()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count()

    def _count(self) -> None:
        self.ended += 1
        self.notify(self.ended, self.total)


def run_sweep(
    tensors_url: str,
    pairs: list[tuple[str, str]],
    base: dict,
    sweep: SweepConfig,
    storage_url: str,
    name: str = "sweep",
    fold: int = 0,
    ray_address: str | None = None,
    on_trial_end: Callable[[int, int], None] | None = None,
) -> dict:
    """Run (or resume) the sweep stored at ``storage_url/name``; returns a JSON-able summary.

    ``on_trial_end(ended, total)`` is called in this process each time a trial of a new sweep
    ends (finished, stopped by ASHA or failed), so an orchestrator can show progress.

    ``base`` holds the TrainConfig fields common to all trials (epochs, weights, seed, ...).
    The result lists every trial and, per ``backbone/strategy``, the full training
    configuration of its best trial (highest validation AUC at any epoch; ties go to the
    trial that trained longer). A trial's ``stopped_early`` means it ended before the epoch
    budget without an error: ASHA stopped it (or the time budget, or the loop's own early
    stopping where ``base`` asks for it). An experiment already at that path is restored, not
    restarted: finished trials are kept, interrupted and errored ones resume from their
    checkpoints (``best_val_auc`` then covers the epochs reported since the resume).
    """
    pairs = [tuple(p) for p in pairs]
    if not pairs:
        raise ValueError("the sweep needs at least one (backbone, strategy) pair")
    base = {"num_threads": threads_for(sweep.cpus_per_trial), **base}
    # Fail here, not in every trial; epochs and seed are the same for every pair.
    defaults = [TrainConfig(**{**base, "backbone": b, "strategy": s}) for b, s in pairs][0]
    tensors_url = resolve(tensors_url).url  # trials run in their own working directories
    storage = resolve(storage_url)
    checkpoints_url = storage.join(f"{name}-trial-checkpoints").url
    storage_path, filesystem = _storage(storage_url)
    experiment_path = storage.join(name).path

    ensure_ray(ray_address)
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial, tensors_url=tensors_url, fold=fold, base=base, checkpoints_url=checkpoints_url
        ),
        {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial},
    )
    restored = tune.Tuner.can_restore(experiment_path, storage_filesystem=filesystem)
    if restored:
        tuner = tune.Tuner.restore(
            experiment_path, trainable, resume_errored=True, storage_filesystem=filesystem
        )
    else:
        scheduler = ASHAScheduler(
            time_attr="epoch",  # not training_iteration: a resumed trial continues its epochs
            metric=METRIC,
            mode="max",
            max_t=defaults.epochs,
            grace_period=sweep.grace_period,
            reduction_factor=sweep.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=sweep.param_space(pairs),
            tune_config=tune.TuneConfig(
                scheduler=scheduler,
                # Seeded draws: the same inputs give the same trials. The concurrency limit
                # goes here: Tune ignores max_concurrent_trials for a generator like this one.
                search_alg=BasicVariantGenerator(
                    random_state=defaults.seed, max_concurrent=sweep.max_concurrent_trials
                ),
                num_samples=sweep.num_samples,
                time_budget_s=sweep.time_budget_s,
                # A finished trial's worker takes the next one: no new process importing torch
                # and the library (about 6 s a trial on 2 cores), and the tensors stay mapped.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                storage_filesystem=filesystem,
                verbose=0,
                # A trial whose worker dies (preemption, OOM kill) restarts; its per-epoch
                # checkpoint is keyed by trial id, so it continues after its last epoch.
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                callbacks=[_TrialsEnded(len(pairs) * sweep.num_samples, on_trial_end)]
                if on_trial_end
                else None,
            ),
        )
    grid = tuner.fit()
    trials = sorted(
        (_trial_record(result, base, defaults.epochs) for result in grid),
        key=lambda t: (t["backbone"], t["strategy"], t["trial_id"]),
    )
    best: dict[str, tuple[tuple[float, int], dict]] = {}
    for trial in trials:
        key = f"{trial['backbone']}/{trial['strategy']}"
        rank = (_finite(trial["best_val_auc"]), trial["epochs_run"])
        if trial["epochs_run"] and (key not in best or rank > best[key][0]):
            best[key] = (rank, trial["config"])
    if not any(t["error"] for t in trials):  # nothing left to resume: drop the checkpoints
        checkpoints = resolve(checkpoints_url)
        if checkpoints.exists():
            checkpoints.fs.rm(checkpoints.path, recursive=True)
    return json_safe(
        {
            "experiment_url": storage.join(name).url,
            "restored": restored,
            "epochs": defaults.epochs,
            "trials": [{k: v for k, v in t.items() if k != "config"} for t in trials],
            "best": {key: config for key, (_, config) in sorted(best.items())},
        }
    )


def _trial_record(result: tune.Result, base: dict, epochs: int) -> dict:
    config = trial_config(base, result.config)
    metrics = result.metrics or {}
    frame = result.metrics_dataframe
    reported = (
        frame[METRIC].dropna().tolist() if frame is not None and METRIC in frame.columns else []
    )
    epochs_run = int(metrics.get("epoch") or 0)
    error = _short_error(result.error)
    return {
        "trial_id": metrics.get("trial_id") or os.path.basename(result.path),
        "backbone": config.backbone,
        "strategy": config.strategy,
        **{k: getattr(config, k) for k in HYPERPARAMETERS},
        "val_auc": metrics.get(METRIC),
        "best_val_auc": max(reported) if reported else None,
        "epochs_run": epochs_run,
        "reports": len(frame) if frame is not None else 0,
        "stopped_early": error is None and epochs_run < epochs,
        "error": error,
        # Where and when it ran (its last attempt): node, GPU ids Ray assigned, start, last report.
        "placement": {k: metrics.get(k) for k in ("node_id", "gpu_ids", "started", "reported")},
        "config": config.model_dump(),
    }
