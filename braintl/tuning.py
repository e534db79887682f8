"""The hyperparameter sweep: one Ray Tune run over (backbone, strategy) × hyperparameters.

Search space: a grid over the (backbone, strategy) pairs, and for each pair ``num_samples``
random draws of learning rate (log-uniform), dropout, head units and batch size — so every pair
gets the same number of trials (``len(pairs) × num_samples`` in all) and none is crowded out by
luck. An ASHA scheduler compares all trials on validation AUC, reported every epoch, and stops
the weak ones early. A trial trains one fold of the tensor cache with the ordinary training
loop; its checkpoint lives in storage next to the sweep, so a restored sweep resumes
interrupted trials from their last checkpoint and never reruns finished ones.

Nothing a resume reads from storage can run code: the sweep's state there is braintl's JSON
trial table (:mod:`braintl.trialtable`) and weights-only checkpoints, while Ray Tune's own,
pickled, state lives in a private temporary folder of the process running the sweep and is
never restored. Storage is any braintl URL (local folder or ``s3://``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np
import ray
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from braintl import trialtable
from braintl.credentials import keep_out_of_ray_logs
from braintl.data.tensors import TensorSet
from braintl.errors import UserError
from braintl.metrics import json_safe
from braintl.storage import Location, StorageError, resolve
from braintl.training import TrainConfig, train
from braintl.trialtable import Report, TrialTable

METRIC = "val_auc"
# Folds submitted at once (a run without a sweep) call ensure_ray from several threads.
_RAY_INIT = threading.Lock()
HYPERPARAMETERS = ("lr", "dropout", "head_units", "batch_size")
PLACEMENT = ("node_id", "gpu_ids", "started", "reported")  # what a trial reports of where it ran
log = logging.getLogger(__name__)


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

    def plan(self, pairs: list[tuple[str, str]], seed: int) -> dict[str, dict]:
        """Every trial's choices, by trial id (``<backbone>-<strategy>-<k>``): a grid over the
        pairs, seeded random draws for the rest, so the same inputs give the same trials."""
        rng = np.random.default_rng(seed)
        low, high = math.log(self.lr_min), math.log(self.lr_max)

        def choose(options: tuple):
            return options[int(rng.integers(len(options)))]

        return {
            f"{backbone}-{strategy}-{k}": {
                "model": f"{backbone}/{strategy}",
                "lr": math.exp(rng.uniform(low, high)),
                "dropout": choose(self.dropout_choices),
                "head_units": choose(self.head_units_choices),
                "batch_size": choose(self.batch_size_choices),
            }
            for backbone, strategy in pairs
            for k in range(self.num_samples)
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


def _trial(
    config: dict, tensors_url: str, fold: int, base: dict, checkpoints_url: str, plan: dict
) -> None:
    """Train one trial, reporting validation AUC and loss to Tune after every epoch."""
    tensors = _tensors(tensors_url)
    train_idx, val_idx = tensors.fold(fold)
    trial_id = config["trial"]
    checkpoint = resolve(checkpoints_url).join(f"{trial_id}.pt")
    # Where the trial ran and when: which node, which (possibly shared) GPU Ray assigned it.
    placement = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
        "started": time.time(),
    }

    def report(record: dict) -> None:
        metrics = {k: record[k] for k in ("val_auc", "val_loss", "train_loss", "epoch")}
        tune.report(metrics | placement | {"reported": time.time()})

    train(
        tensors,
        train_idx,
        val_idx,
        trial_config(base, plan[trial_id]),
        callback=report,
        checkpoint_url=checkpoint,
    )


def _short_error(error: str | None) -> str | None:
    if error is None:
        return None
    lines = [line for line in error.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "failed"


def _error_text(trial) -> str | None:
    """Tune's text error file, in this process's own folder: never its pickled twin."""
    path = trial.error_file
    if path is None or not os.path.exists(path):
        return None
    with open(path) as fh:
        return fh.read()


def _finite(value) -> float:
    return float(value) if value is not None and math.isfinite(value) else -math.inf


# The table is rewritten whole and grows with the sweep (389 KB at 1 000 trials with one report
# each, benchmarks/scale.json), so writing it at every trial event would cost O(trials²) bytes.
# It is written at most this often; a trial's end or restart goes to
# storage at once as that trial's journal entry alone (:mod:`braintl.trialtable`), and the sweep's
# end settles the whole table.
PROGRESS_SAVE_INTERVAL_S = 5.0


class _TableWriter(tune.Callback):
    """Keeps the trial table in storage current from Tune's events in this (the driver's)
    process, and calls ``notify(ended, total)`` as trials end."""

    def __init__(
        self,
        table: TrialTable,
        location: Location,
        notify: Callable[[int, int], None] | None,
        interval_s: float = PROGRESS_SAVE_INTERVAL_S,
    ):
        self.table, self.location, self.notify = table, location, notify
        self.ended = len(table.plan) - len(table.unfinished())
        self.interval_s, self.saved_at, self.unsaved = interval_s, -math.inf, False

    def _changed(self, trial) -> trialtable.Trial:
        entry = self.table.trials[trial.config["trial"]]
        entry.version += 1
        return entry

    def on_trial_start(self, iteration, trials, trial, **info):
        self._changed(trial).status = "running"
        self._progress()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        fields = {k: result.get(k) for k in ("val_auc", "val_loss", "train_loss")}
        report = Report(epoch=result["epoch"], attempt=self.table.attempt, **fields)
        entry = self._changed(trial)
        entry.reports.append(report)
        entry.placement = {k: result.get(k) for k in PLACEMENT}
        self._progress()

    def on_step_end(self, iteration, trials, **info):
        """Tune's loop turns several times a second: progress held back is saved here."""
        if self.unsaved:
            self._progress()

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._changed(trial).restarts += 1
        self._journal(trial.config["trial"])

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "finished", None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "error", _short_error(_error_text(trial)) or "failed")

    def _progress(self) -> None:
        self.unsaved = True
        if time.monotonic() - self.saved_at >= self.interval_s:
            self._save()

    def _save(self) -> None:
        """A storage outage must not end the sweep: the table is written again after the
        interval, and settled once more when the sweep ends (where a failure fails the sweep
        task)."""
        self.saved_at = time.monotonic()
        try:
            self.table.write(self.location)
        except StorageError as exc:
            log.warning("trial table not saved, retried at the next event: %s", exc)
            self.unsaved = True
            return
        self.unsaved = False

    def _journal(self, trial_id: str) -> None:
        """The trial's entry at once; in an outage, the next table write (throttled like the
        progress: retrying each entry at every step of Tune's loop would stall it) holds it."""
        try:
            self.table.write_trial(self.location, trial_id)
        except StorageError as exc:
            log.warning("trial %s's entry not saved, retried with the table: %s", trial_id, exc)
            self.unsaved = True

    def _end(self, trial, status: str, error: str | None) -> None:
        entry = self._changed(trial)
        entry.status, entry.error = status, error
        self._journal(trial.config["trial"])
        self.ended += 1
        if self.notify:
            self.notify(self.ended, len(self.table.plan))


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
    """Run (or resume) the sweep whose trial table is ``storage_url/<name>-trials.json``;
    returns a JSON-able summary.

    ``on_trial_end(ended, total)`` is called in this process each time a trial ends (finished,
    stopped by ASHA or failed), so an orchestrator can show progress.

    ``base`` holds the TrainConfig fields common to all trials (epochs, weights, seed, ...).
    The result lists every trial and, per ``backbone/strategy``, the full training
    configuration of its best trial (highest validation AUC at any epoch; ties go to the
    trial that trained longer). A trial's ``stopped_early`` means it ended before the epoch
    budget without an error: ASHA stopped it (or the time budget, or the loop's own early
    stopping where ``base`` asks for it). A sweep with a table at that path is resumed, not
    restarted: finished trials are kept, interrupted and errored ones continue from their
    weights-only checkpoints (ASHA then compares only the trials still running).
    """
    pairs = [tuple(p) for p in pairs]
    if not pairs:
        raise ValueError("the sweep needs at least one (backbone, strategy) pair")
    base = {"num_threads": threads_for(sweep.cpus_per_trial), **base}
    # Fail here, not in every trial; epochs and seed are the same for every pair.
    defaults = [TrainConfig(**{**base, "backbone": b, "strategy": s}) for b, s in pairs][0]
    tensors_url = resolve(tensors_url).url  # trials run in their own working directories
    storage = resolve(storage_url)
    checkpoints = storage.join(f"{name}-trial-checkpoints")
    plan = sweep.plan(pairs, defaults.seed)
    where = storage.join(f"{name}-trials.json")
    table = trialtable.read(where)
    _ignore_tune_state(storage.join(name), where)
    if table is not None and table.plan != plan:
        raise UserError(
            f"{where.url}: written for other sweep settings (trials differ). Delete it and "
            f"{checkpoints.url} to start over, or pass another storage URL or sweep name"
        )
    restored = table is not None
    if table is None:
        table = TrialTable.new(plan)
    elif table.unfinished():
        table.attempt += 1
        log.info(
            "%s: resuming %d of %d trials from braintl's trial table and weights-only checkpoints",
            where.url,
            len(table.unfinished()),
            len(plan),
        )
    if table.unfinished() or trialtable.journal(where).exists():
        table.settle(where)  # the journal read (or one beside an ignored table) goes
    if table.unfinished():
        trainable = tune.with_parameters(
            _trial,
            tensors_url=tensors_url,
            fold=fold,
            base=base,
            checkpoints_url=checkpoints.url,
            plan=plan,
        )
        _fit(trainable, table, where, sweep, defaults.epochs, name, ray_address, on_trial_end)
    trials = sorted(
        (_trial_record(i, plan[i], table.trials[i], base, defaults.epochs) for i in plan),
        key=lambda t: (t["backbone"], t["strategy"], t["trial_id"]),
    )
    best: dict[str, tuple[tuple[float, int], dict]] = {}
    for trial in trials:
        key = f"{trial['backbone']}/{trial['strategy']}"
        rank = (_finite(trial["best_val_auc"]), trial["epochs_run"])
        if trial["epochs_run"] and (key not in best or rank > best[key][0]):
            best[key] = (rank, trial["config"])
    if not table.unfinished() and checkpoints.exists():  # nothing left to resume
        checkpoints.fs.rm(checkpoints.path, recursive=True)
    return json_safe(
        {
            "trials_url": where.url,
            "restored": restored,
            "epochs": defaults.epochs,
            "trials": [{k: v for k, v in t.items() if k != "config"} for t in trials],
            "best": {key: config for key, (_, config) in sorted(best.items())},
        }
    )


def _ignore_tune_state(folder: Location, table: Location) -> None:
    """Say so when storage holds a Tune experiment (an older braintl's, or planted): it is
    pickled, so it is never restored."""
    if folder.exists():
        log.warning(
            "%s: Ray Tune state there is ignored, never restored (it is pickled: restoring it "
            "would run code a bucket writer put there); the sweep resumes from %s",
            folder.url,
            table.url,
        )


# Tune's own records of a sweep: CSV, JSON and TensorBoard files per trial (each result
# flushed with an fsync) and snapshots of the whole experiment (every trial's state, so each
# costs O(trials)) taken every few seconds. They go to the private folder deleted after the
# sweep; braintl reads neither (its trial table is the sweep's record). With them, the driver
# took 1.29x the wall time and 1.33x the CPU time at 500 trials, 1.44x and 1.52x at 100 (A B B A
# medians in one process, benchmarks/scale.json; docs/scaling.md).
# Off unless the environment sets these variables itself; Tune still snapshots the experiment
# once at the end, and the JSON logger stays (``_fit``): Tune's result grid reads its file and
# warns for each trial without.
TUNE_RECORDS_OFF = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "TUNE_GLOBAL_CHECKPOINT_S": "inf"}


def _fit(
    trainable,
    table: TrialTable,
    where: Location,
    sweep: SweepConfig,
    epochs: int,
    name: str,
    ray_address: str | None,
    on_trial_end: Callable[[int, int], None] | None,
) -> None:
    """Run the table's unfinished trials with Tune, its state in a private temporary folder."""
    ensure_ray(ray_address)
    for variable, value in TUNE_RECORDS_OFF.items():
        os.environ.setdefault(variable, value)
    scheduler = ASHAScheduler(
        time_attr="epoch",  # not training_iteration: a resumed trial continues its epochs
        metric=METRIC,
        mode="max",
        max_t=epochs,
        grace_period=sweep.grace_period,
        reduction_factor=sweep.reduction_factor,
    )
    private = tempfile.mkdtemp(prefix="braintl-tune-")  # 0700: only this user reads it
    try:
        tune.Tuner(
            tune.with_resources(
                trainable, {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial}
            ),
            param_space={"trial": tune.grid_search(table.unfinished())},
            tune_config=tune.TuneConfig(
                scheduler=scheduler,
                # The concurrency limit goes here: Tune ignores max_concurrent_trials for a
                # generator like this one.
                search_alg=BasicVariantGenerator(max_concurrent=sweep.max_concurrent_trials),
                time_budget_s=sweep.time_budget_s,
                # A finished trial's worker takes the next one: no new process importing torch
                # and the library (about 6 s a trial on 2 cores), and the tensors stay mapped.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=private,
                verbose=0,
                # A trial whose worker dies (preemption, OOM kill) restarts; its checkpoint is
                # keyed by trial id, so it continues after its last checkpointed epoch.
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                callbacks=[_TableWriter(table, where, on_trial_end), JsonLoggerCallback()],
            ),
        ).fit()
    finally:
        shutil.rmtree(private, ignore_errors=True)
    table.settle(where)  # every entry, also those the callbacks could not save in an outage


def _trial_record(
    trial_id: str, choices: dict, entry: trialtable.Trial, base: dict, epochs: int
) -> dict:
    config = trial_config(base, choices)
    # A worker that died between reporting an epoch and checkpointing it reports it again.
    by_epoch = {report.epoch: report for report in entry.reports}
    reported = [by_epoch[e].val_auc for e in sorted(by_epoch)]
    scores = [auc for auc in reported if auc is not None and math.isfinite(auc)]
    epochs_run = max(by_epoch, default=0)
    return {
        "trial_id": trial_id,
        "backbone": config.backbone,
        "strategy": config.strategy,
        **{k: getattr(config, k) for k in HYPERPARAMETERS},
        "val_auc": reported[-1] if reported else None,
        "best_val_auc": max(scores) if scores else None,
        "epochs_run": epochs_run,
        "reports": len(by_epoch),
        "stopped_early": entry.error is None and epochs_run < epochs,
        "error": entry.error,
        "placement": entry.placement,
        "config": config.model_dump(),
    }
