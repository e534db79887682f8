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
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

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
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from braintl import cluster, progress, replica, runlease
from braintl.caveats import run_warnings, synthetic_data
from braintl.champion import ChampionRule
from braintl.codeversion import code_key
from braintl.data.clinical import ClinicalConfig
from braintl.data.prepare import DataConfig
from braintl.data.provenance import GroupBy
from braintl.errors import UserError
from braintl.limits import gpu_request_problem, local_gpus
from braintl.models import STRATEGIES as MODEL_STRATEGIES
from braintl.models import list_models
from braintl.models.registry import get_entry
from braintl.results import METRICS, TUNING_FOLD, cv_plan, to_markdown
from braintl.runinfo import environment
from braintl.storage import COMPLETE_MARKER, resolve
from braintl.timeouts import NIGHTLY_TIMEOUT_S, RUN_TIMEOUT_S, Timeouts, expired
from braintl.tuning import SweepConfig
from braintl.urls import credentials_problem, inside_problem, is_inside
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

BACKBONES = ("mobilenet_v2", "vgg16", "resnet50", "xception", "scratch_cnn")
STRATEGIES = ("frozen", "finetune")
SCRATCH = "scratch_cnn"

# Settings each profile presets; any field given explicitly wins (merged before validation).
# paper trains the seed's own settings (braintl.replica) unless sweep settings are given.
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "weights": "none",
        "image_size": 64,
        "epochs": 3,
        "batch_size": 16,
        "folds": 3,
        "augment": False,
        "tuning": "sweep",
        "cpus_per_fold": 1.0,
        "gpus_per_fold": 0.0,
        "sweep": {"num_samples": 1, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0},
    },
    "paper": {
        "weights": "imagenet",
        "image_size": 224,
        "epochs": 18,
        "batch_size": 18,
        "folds": 5,
        "augment": True,
        "tuning": "seed",
        "cpus_per_fold": 2.0,
        "gpus_per_fold": 0.25,
        "sweep": {"cpus_per_trial": 2.0, "gpus_per_trial": 0.25},
    },
}
# Fields that change where or whether a run happens, not what it computes.
NOT_IN_RUN_KEY = {
    "data_url",
    "out_url",
    "ray_address",
    "force",
    "cpus_per_fold",
    "gpus_per_fold",
    "champion",
    "timeouts",
}


class RetrainParams(BaseModel):
    """Everything a retrain run needs; the Prefect UI renders it as the run form."""

    model_config = ConfigDict(extra="forbid")

    profile: Literal["quick", "paper"] = Field(
        "quick", description="presets: quick (a CPU, minutes) or paper (the seed's, on GPUs)"
    )
    data_url: str | None = Field(None, description="labelled scans; None: synthetic phantoms")
    out_url: str = Field("braintl-runs", description="runs, caches and latest.json go here")
    protocol: Literal["groups", "paper"] = Field(
        "groups", description="groups: leak-free split; paper: the seed's (leaky) protocol"
    )
    backbones: list[str] = Field(default_factory=lambda: list(BACKBONES))
    strategies: list[str] = Field(
        default_factory=lambda: list(STRATEGIES), description="scratch_cnn always trains full"
    )
    weights: str = Field(
        "none",
        description="imagenet, none, previous (the last run's published model), a published "
        "model URL, or a state-dict URL",
    )
    image_size: int = Field(64, ge=16)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=2)
    folds: int = Field(3, ge=2, le=20)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    group_by: GroupBy = Field(None, description="regex: equal (?P<group>...) of paths = one source")
    manifest_url: str | None = Field(None, description="CSV path,label,group: labels and groups")
    clinical: ClinicalConfig = Field(
        default_factory=ClinicalConfig, description="DICOM windows and groups, NIfTI slices"
    )
    external_data_urls: list[str] = Field(
        default_factory=list,
        description="labelled folders from other sources (a folder per label): the published "
        "model is scored on each, copies of development scans removed first",
    )
    augment: bool = Field(False, description="offline augmentation of training partitions")
    seed: int = Field(0, ge=0)
    tuning: Literal["sweep", "seed"] = Field(
        "sweep",
        description="sweep: Ray Tune chooses each model's hyperparameters; seed: no sweep, every "
        "model trains with the seed's own settings (the paper replica). Giving sweep settings "
        "without tuning asks for a sweep",
    )
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    cpus_per_fold: float = Field(1.0, gt=0)
    gpus_per_fold: float = Field(0.0, ge=0, description="fractions share a GPU")
    ray_address: str | None = Field(
        None,
        description="None: local Ray; a dashboard http://head:8265 (work runs as Ray jobs); "
        "or, from inside the cluster, its GCS address head:6379",
    )
    force: bool = Field(False, description="run even when data and configuration are unchanged")
    champion: ChampionRule = Field(
        default_factory=ChampionRule, description="when this run's model replaces the champion"
    )
    timeouts: Timeouts = Field(
        default_factory=Timeouts, description="per stage; derived from the run's size by default"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = PROFILES[data.get("profile", "quick")]
        given_sweep = data.get("sweep") or {}
        if isinstance(given_sweep, SweepConfig):
            given_sweep = given_sweep.model_dump(include=given_sweep.model_fields_set)
        tuning = {"tuning": "sweep"} if given_sweep else {}  # asked for a sweep: gets one
        return {**preset, **tuning, **data, "sweep": {**preset["sweep"], **given_sweep}}

    # Bad values are refused here, before any work, with the field named: the Prefect form
    # and `braintl run` both build this model.
    @field_validator("backbones", "strategies")
    @classmethod
    def _known_names(cls, names: list[str], info: ValidationInfo) -> list[str]:
        known = list_models() if info.field_name == "backbones" else list(MODEL_STRATEGIES)
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            what = f"unknown {', '.join(map(repr, unknown))}" if unknown else "none given"
            raise _bad(f"{what}; choose from {', '.join(known)}")
        return names

    @field_validator("data_url", "out_url", "weights", "manifest_url")
    @classmethod
    def _no_credentials(cls, url: str | None, info: ValidationInfo) -> str | None:
        problem = credentials_problem(info.field_name, url)
        if problem:
            raise _bad(problem)
        return url

    @field_validator("external_data_urls")
    @classmethod
    def _external_apart(cls, urls: list[str], info: ValidationInfo) -> list[str]:
        """Each external set once, none inside the development data (it would be listed as
        development scans too), no credentials."""
        data_url = info.data.get("data_url")
        problems = [credentials_problem("external_data_urls", url) for url in urls]
        problems += [
            f"external_data_urls: {url} lies inside data_url={data_url}: its scans are "
            "development scans. Give a folder outside the development data"
            for url in urls
            if data_url and is_inside(url, data_url)
        ]
        repeated = sorted({url for url in urls if urls.count(url) > 1})
        if repeated:
            problems.append(
                f"external_data_urls: {', '.join(repeated)} given twice; give each once"
            )
        found = [p for p in problems if p]
        if found:
            raise _bad("; ".join(found))
        return urls

    @field_validator("ray_address")
    @classmethod
    def _supported_address(cls, address: str | None) -> str | None:
        problem = cluster.address_problem(address)
        if problem:
            raise _bad(problem)
        return address

    @model_validator(mode="after")
    def _cluster_reads_storage(self) -> RetrainParams:
        """On a cluster, the nodes read the data and write the results: local paths would be
        another machine's disk (or a different disk on each node)."""
        problems = [
            cluster.storage_problem(name, getattr(self, name), self.ray_address)
            for name in ("data_url", "out_url")
        ]
        if any(problems):
            raise _bad("; ".join(p for p in problems if p))
        return self

    @field_validator("out_url")
    @classmethod
    def _out_outside_data(cls, out_url: str, info: ValidationInfo) -> str:
        problem = inside_problem("out_url", out_url, "data_url", info.data.get("data_url"))
        if problem:
            raise _bad(problem)
        return out_url

    @model_validator(mode="after")
    def _gpus_fit_one_node(self) -> RetrainParams:
        """See :func:`braintl.limits.gpu_request_problem`: with local Ray, one node is this
        machine; with ``ray_address`` only the form of the request is checked."""
        requests = {"gpus_per_fold": self.gpus_per_fold}
        if self.tuning == "sweep":
            requests = {"sweep.gpus_per_trial": self.sweep.gpus_per_trial, **requests}
        per_node = None if self.ray_address or not any(requests.values()) else local_gpus()
        problems = [gpu_request_problem(name, gpus, per_node) for name, gpus in requests.items()]
        if any(problems):
            raise _bad(" ".join(p for p in problems if p))
        return self

    @model_validator(mode="after")
    def _folds_left_to_score(self) -> RetrainParams:
        """A sweep tunes on fold 0, which cross-validation then does not score: at least two
        folds must remain (braintl.results.cv_plan)."""
        if self.tuning == "sweep" and self.folds < 3:
            raise _bad(
                f"folds={self.folds} with tuning='sweep': the sweep chooses hyper-parameters on "
                f"fold {TUNING_FOLD}, which cross-validation then does not score, so folds must "
                "be at least 3 (two scored folds); give folds=3 or more, or tuning='seed'"
            )
        return self

    def scored_folds(self) -> list[int]:
        """The folds cross-validation trains and scores: all but the sweep's tuning fold, or
        all k when no sweep ran (``tuning="seed"``)."""
        return cv_plan(self.folds, self.tuning)["scored_folds"]

    def pairs(self) -> list[tuple[str, str]]:
        """(backbone, strategy) pairs to train; the scratch CNN has no frozen part."""
        pairs = []
        for backbone in self.backbones:
            strategies = ["full"] if backbone == SCRATCH else self.strategies
            pairs += [(backbone, s) for s in strategies if (backbone, s) not in pairs]
        return pairs

    def sweep_groups(self, warm: dict | None = None) -> dict[str, list[tuple[str, str]]]:
        """Pairs by the weights they start from: models without ImageNet weights start from
        none, so the paper profile sweeps them apart from the pretrained ones. With a warm
        start (``braintl.publish.warm_start``), the published model's backbone starts from its
        weights and the other backbones from the profile's."""
        if warm and warm["backbone"] not in self.backbones:
            raise UserError(
                f"weights={self.weights!r} is a {warm['backbone']} model ({warm['model']}), "
                f"but backbones are {', '.join(self.backbones)}: add {warm['backbone']} to "
                "backbones, or start from 'none' or 'imagenet'"
            )
        start = PROFILES[self.profile]["weights"] if warm else self.weights
        groups: dict[str, list[tuple[str, str]]] = {}
        for backbone, strategy in self.pairs():
            pretrained = get_entry(backbone).spec.pretrained is not None
            weights = start if pretrained or start != "imagenet" else "none"
            if warm and backbone == warm["backbone"]:
                weights = warm["weights"]
            groups.setdefault(weights, []).append((backbone, strategy))
        return groups

    def data_config(self) -> DataConfig:
        return DataConfig(
            protocol=self.protocol,
            folds=self.folds,
            test_fraction=self.test_fraction,
            seed=self.seed,
            group_by=self.group_by,
            manifest_url=self.manifest_url,
            clinical=self.clinical,
            preprocess={"image_size": self.image_size},
            augment={"enabled": self.augment},
        )

    def base_train_config(self, weights: str) -> dict:
        return {
            "weights": weights,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def fixed_configs(self, weights: str, pairs: list[tuple[str, str]]) -> dict[str, dict]:
        """With ``tuning="seed"``, each pair's training configuration: the seed's settings."""
        return replica.seed_configs(pairs, self.base_train_config(weights))

    def run_key(self, fingerprint: str, external: list[dict] | None = None) -> str:
        """Same data, same settings and same library code → same key: the run would change
        nothing. ``external``: the screened external sets, whose content counts too."""
        settings = self.model_dump(mode="json", exclude=NOT_IN_RUN_KEY)
        if external:
            settings["external"] = [(s["members"], s["copies_removed"]) for s in external]
        blob = json.dumps({"data": fingerprint, "code": code_key(), **settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _bad(problem: str) -> PydanticCustomError:
    """A validation error whose message is ``problem`` as written (no "Value error, ")."""
    return PydanticCustomError("bad_parameter", "{problem}", {"problem": problem})


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
    warnings = run_warnings(starts, synthetic_data(tensors_url))
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
        f"# Retrain run {run_id}\n\n{opening}{to_markdown(summary)}\nResults: `{run.url}`\n",
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
