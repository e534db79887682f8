"""The nightly retrain flow: data → tensors → Ray Tune sweep → cross-validation → results.

Prefect decides what runs and in what order; Ray decides where the training runs. Tasks pass
URLs and small records only. A completed run's model challenges the champion (it moves only
when the model is not worse); ``latest.json`` moves last, and only when every fold finished.
One flow run at a time works on an output: the nightly, ad-hoc and cluster deployments share
a Prefect global concurrency limit per ``out_url`` (:func:`output_limit`), and the run's lease
keeps runs apart even where that limit does not reach (two Prefect servers, ephemeral ones).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_client
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.futures import PrefectFuture, as_completed
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as current_flow_run
from prefect.settings import PREFECT_API_URL
from prefect.states import Completed, State
from prefect.task_engine import TaskRunTimeoutError
from prefect.task_runners import ThreadPoolTaskRunner

from braintl import cluster, progress, runlease
from braintl.caveats import SMOKE_TEST_PROFILE, run_warnings, synthetic_data
from braintl.markdown import markdown_escape
from braintl.results import METRICS, cv_plan, to_markdown
from braintl.runinfo import environment
from braintl.storage import COMPLETE_MARKER, resolve
from braintl.timeouts import NIGHTLY_TIMEOUT_S, RUN_TIMEOUT_S, expired
from flows.params import RetrainParams
from flows.roots import confine
from tasks.champion import challenge_champion
from tasks.data import data_source, prepare_data, snapshot
from tasks.external import screen_external, validate_external
from tasks.model import publish_model, warm_start
from tasks.report import render_report
from tasks.results import (
    aggregate,
    all_exist,
    claim_run,
    complete_run,
    publish_latest,
    read_latest,
    write_results,
    write_run_file,
)
from tasks.results_storage import shared_results
from tasks.training import sweep, train_fold

# A flow run renews its slot of the output's limit every 45 s; a killed one's slot is handed on
# this long after its last renewal, by the server's repossessor (not run by ephemeral servers).
SLOT_LEASE_S = 60  # Prefect's minimum


def output_limit(out_url: str) -> str:
    """The global concurrency limit of one output: ``braintl-out-<hash of its URL>``."""
    return f"braintl-out-{hashlib.sha256(resolve(out_url).url.encode()).hexdigest()[:12]}"


@contextlib.contextmanager
def one_run_per_output(out_url: str) -> Iterator[None]:
    """Hold the output's limit (created with one slot when missing; an operator may change it)
    while the flow runs: a second flow run on the same output waits, then sees what the first
    wrote. A lost Prefect server does not stop the run: the run's lease still guards it.

    Without a configured server (Prefect's temporary one, ``braintl run`` alone) there is no
    limit: that server serves one process, and it never frees the slot of a killed run, which
    its database in PREFECT_HOME would keep for every later run on the output."""
    if not PREFECT_API_URL.value():
        yield
        return
    name = output_limit(out_url)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another flow run came first
                limit = GlobalConcurrencyLimitCreate(name=name, limit=1)
                client.create_global_concurrency_limit(limit)
    print(f"taking concurrency limit {name} of {resolve(out_url).url}")
    with concurrency(
        name,
        occupy=1,
        lease_duration=SLOT_LEASE_S,
        strict=True,
        raise_on_lease_renewal_failure=False,
    ):
        yield


def _fold_files_exist(record: dict) -> bool:
    return all_exist([record[key] for key in ("metrics_url", "model_url")])


def _training_timeout(params: RetrainParams, stage: str, images: int, runs: int) -> float:
    """Folds are assumed to run as many at once as the sweep's trials."""
    at_once = params.sweep.max_concurrent_trials
    return params.timeouts.training(stage, images, params.image_size, params.epochs, runs, at_once)


def _table_rows(summary: dict) -> list[dict]:
    rows = []
    for model in summary["models"]:
        row: dict[str, Any] = {"model": model["model"], "folds": len(model["folds"])}
        for part in ("val", "test"):
            for metric in METRICS:
                s = model[part][metric]
                row[f"{part}_{metric}"] = s["mean"]
                row[f"{part}_{metric}_sd"] = s["sd"]
        rows.append(row)
    return rows


def _release_lease(flow, flow_run, state) -> None:
    """Flow hook: however the flow run ended, its run's lease ends with it."""
    runlease.release(str(flow_run.id))


def _stop_cluster_jobs(flow, flow_run, state) -> None:
    """Flow hook: a cancelled, failed or timed-out flow run stops the Ray jobs it submitted
    (a crashed one cannot: its jobs run on, and the resumed run re-attaches to them)."""
    params = flow_run.parameters.get("params") or {}  # JSON from the API; the model in-process
    address = params.get("ray_address") if isinstance(params, dict) else params.ray_address
    if cluster.uses_jobs(address):
        stopped = cluster.stop_jobs(address, **{cluster.PREFECT_RUN_KEY: str(flow_run.id)})
        print(f"stopped Ray jobs of this flow run: {', '.join(stopped) or 'none running'}")


@flow(
    name="retrain",
    task_runner=ThreadPoolTaskRunner(max_workers=64),
    log_prints=True,
    on_completion=[_release_lease],
    on_failure=[_release_lease, _stop_cluster_jobs],
    on_crashed=[_release_lease],
    on_cancellation=[_release_lease, _stop_cluster_jobs],
    timeout_seconds=RUN_TIMEOUT_S,
)
def retrain(params: RetrainParams = RetrainParams()) -> dict | State:  # noqa: B008
    """Retrain and evaluate every (backbone, strategy) pair; skip when nothing changed."""
    confine(
        data_url=params.data_url,
        out_url=params.out_url,
        manifest_url=params.manifest_url,
        weights=None if params.weights in ("imagenet", "none", "previous") else params.weights,
    )
    with one_run_per_output(params.out_url):
        return _retrain(params)


def _retrain(params: RetrainParams) -> dict | State:
    started = datetime.now(UTC).isoformat()
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        stages[stage] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()

    shared = shared_results(params.out_url)  # the cached stages keep results in OUT/.prefect
    data_url = data_source(params.data_url, params.out_url)
    data_config = params.data_config()
    external_timeout = params.timeouts.external(data_config, len(params.external_data_urls))
    inputs = (data_url, params.out_url, data_config, snapshot(data_url, params.manifest_url))
    screened = []
    if params.external_data_urls:  # a bad external folder fails here, before any training
        snapshots = [inputs[-1], *(snapshot(url) for url in params.external_data_urls)]
        screen = screen_external.with_options(timeout_seconds=external_timeout, **shared)
        screened = screen(data_url, params.external_data_urls, data_config, snapshots)
        lap("screen-external")
    prepare_timeout = params.timeouts.prepare(data_config)
    prepare = prepare_data.with_options(timeout_seconds=prepare_timeout, **shared)
    prepared = prepare(*inputs)
    tensors_marker = resolve(prepared["tensors_url"]).join(COMPLETE_MARKER).url
    if not all_exist([tensors_marker]):  # a cached record, its files deleted
        prepared = prepare.with_options(refresh_cache=True)(*inputs)
    lap("prepare")
    run_key = params.run_key(prepared["fingerprint"], screened)
    latest = read_latest(params.out_url)
    if latest and latest.get("run_key") == run_key and not params.force:
        message = f"data and configuration equal those of run {latest['run_id']}"
        print(f"nothing changed: {message}; results in {latest['run_url']}")
        return Completed(name="Nothing changed", message=message, data=latest)

    claimed = claim_run(params.out_url, run_key, owner=str(current_flow_run.id))
    run_id = claimed["run_id"]
    run = resolve(params.out_url).join("runs", run_id)
    started = f"{'resuming interrupted' if claimed['resumed'] else 'new'} run {run_id}: {run.url}"
    print(started)
    progress.note(started)
    if claimed["warning"]:
        print(f"WARNING: the run lease is not atomic here: {claimed['warning']}")
    write_run_file(
        run.url,
        "config.json",
        {
            "run_id": run_id,
            "run_key": run_key,
            "params": params.model_dump(mode="json"),
            "data": prepared,
        },
    )
    tensors_url, images = prepared["tensors_url"], prepared["meta"]["n"]
    best: dict[str, dict] = {}
    sweeps: dict[str, dict] = {}
    warm = warm_start(params.weights, params.out_url)
    groups = params.sweep_groups(warm)
    starts = [(backbone, w) for w, pairs in groups.items() for backbone, _ in pairs]
    warnings = run_warnings(
        starts, synthetic_data(tensors_url), smoke_test=params.profile == SMOKE_TEST_PROFILE
    )
    for warning in warnings:  # before any training: what the numbers will not be
        get_run_logger().warning(f"WARNING: {warning}")
    for weights, pairs in groups.items():
        if params.tuning == "seed":
            best |= params.fixed_configs(weights, pairs)
            print(f"no sweep (tuning seed): {len(pairs)} models train the seed's own settings")
            continue
        name = {"imagenet": "pretrained", "none": "random-init"}.get(weights, "custom-weights")
        trials = len(pairs) * params.sweep.num_samples
        timeout = _training_timeout(params, "sweep", images, trials)
        progress.report(f"trials {name}", 0, trials)
        try:
            swept = sweep.with_options(
                task_run_name=f"sweep-{name}",
                refresh_cache=params.force,
                timeout_seconds=timeout,
                **shared,
            )(
                tensors_url,
                pairs,
                params.base_train_config(weights),
                params.sweep,
                run.join("sweep").url,
                name,
                params.ray_address,
            )
        except TaskRunTimeoutError as exc:  # Prefect's message names neither stage nor setting
            what = f"sweep {name} ({trials} trials, {run.join('sweep', name).url})"
            raise expired("sweep", timeout, what) from exc
        progress.report(f"trials {name}", len(swept["trials"]), trials)  # cached ones too
        best |= swept["best"]
        sweeps[name] = swept
        lap(f"sweep-{name}")
    write_run_file(run.url, "sweep.json", sweeps)

    # The sweep's tuning fold chose the hyper-parameters; it neither trains nor ranks a model.
    plan = cv_plan(params.folds, params.tuning, prepared["meta"].get("parts"))
    print(f"cross-validation: {plan['note']}")
    jobs = [(config, fold) for config in best.values() for fold in plan["scored_folds"]]
    folds_timeout = _training_timeout(params, "cross-validation", images, len(jobs))

    def submit(config: dict, fold: int, refresh: bool) -> PrefectFuture:
        name = f"{config['backbone']}-{config['strategy']}"
        run_name = f"cv-{name}-fold-{fold}"
        options = {"task_run_name": run_name, "refresh_cache": refresh, **shared}
        return train_fold.with_options(**options).submit(
            tensors_url,
            config,
            fold,
            run.join("folds", name, f"fold-{fold}").url,
            params.cpus_per_fold,
            params.gpus_per_fold,
            params.ray_address,
            folds_timeout,
        )

    futures = {submit(*job, params.force): job for job in jobs}
    progress.report("folds", 0, len(jobs))
    artifact = create_progress_artifact(
        0.0, key="retrain-folds", description=f"cross-validation folds of run {run_id}"
    )
    records: list[dict] = []
    for attempt in ("first", "again"):
        stale = []
        for future in as_completed(list(futures)):
            record, job = future.result(), futures[future]
            if not _fold_files_exist(record):  # a cached record whose files were deleted
                stale.append(job)
                continue
            records.append(record)
            update_progress_artifact(artifact, 100 * len(records) / len(jobs))
            progress.report("folds", len(records), len(jobs))
            print(f"folds done: {len(records)}/{len(jobs)}")
        if not stale:
            break
        if attempt == "again":
            raise RuntimeError(f"{len(stale)} folds trained but their files are not in {run.url}")
        print(f"{len(stale)} cached fold results point at deleted files: training them again")
        futures = {submit(*job, True): job for job in stale}
    lap("cross-validation")

    summary = aggregate(records, plan)
    publish_timeout = params.timeouts.publish()
    urls = write_results.with_options(timeout_seconds=publish_timeout)(run.url, summary)
    lap("results")
    write_run_file(
        run.url,
        "run.json",
        {"run_id": run_id, "started": started, "stages": stages, **environment()},
    )
    create_table_artifact(
        _table_rows(summary), key="retrain-results", description=f"run {run_id}, mean over folds"
    )
    opening = "".join(f"**Warning: {w}**\n\n" for w in warnings)
    if screened:
        opening += (
            f"External validation on {len(screened)} set(s) follows publishing: the "
            "`external-validation` artifact and the report's External validation section.\n\n"
        )
    create_markdown_artifact(
        f"# Retrain run {run_id}\n\n{opening}{to_markdown(summary)}\n"
        f"Results: {markdown_escape(run.url)}\n",
        key="retrain-summary",
        description="results table",
    )
    report = render_report.with_options(timeout_seconds=publish_timeout)(run.url)
    model = publish_model.with_options(timeout_seconds=publish_timeout)(run.url)
    external = None
    if screened:
        validate = validate_external.with_options(timeout_seconds=external_timeout)
        external = validate(run.url, model["model"], tensors_url, screened)
        report = render_report.with_options(timeout_seconds=publish_timeout)(run.url)  # + section
    record = {
        "run_id": run_id,
        "run_key": run_key,
        "run_url": run.url,
        "fingerprint": prepared["fingerprint"],
        "results": urls,
        "report": report,
        "model": model["model"],
        "external": external,
        "finished": datetime.now(UTC).isoformat(),
    }
    complete_run(run.url, record)
    decision = challenge_champion(run.url, params.out_url, params.champion)
    record["champion"] = {k: decision[k] for k in ("promote", "reason", "champion")}
    if not publish_latest(params.out_url, record):
        print(f"latest.json names a run newer than {run_id}: it stays")
    return record


# The nightly deployment's flow: a failed night is retried once, a minute later (time for a lost
# node to be replaced), finished stages coming from the cache; its timeout keeps both attempts
# within a day, so a hung night never blocks the next. Prefect's flow retries take no condition,
# so a user's mistake fails twice, a minute apart; the failure alert waits for the second.
nightly_retrain = retrain.with_options(
    retries=1, retry_delay_seconds=60, timeout_seconds=NIGHTLY_TIMEOUT_S
)
