"""Training stages: the Ray Tune sweep and one cross-validation fold, both run on Ray.

Both are cached by their inputs less where they write, and by the library's code, so a rerun
after a crash reuses the finished sweep and folds (their records keep pointing at the run that
trained them) while a changed library trains them again; the flow refreshes them when forced.
A fold retries what another try can fix (a storage outage, a worker lost more often than Ray
retries it), resuming from its checkpoint, with growing delays, and so does the sweep (restored
from its storage, errored trials resumed); a user's mistake or a timeout fails at once.
Timeouts are left out of the cache keys.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from braintl import cluster, folds, progress, tuning
from braintl.storage import resolve
from tasks.caching import COMPUTED
from tasks.data import worth_retrying

# Waits of 10, 20 and 40 s: training holds hours of work, worth riding out a minute-long outage.
TRAINING_RETRIES = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=10),
    "retry_condition_fn": worth_retrying,
}


@task(
    name="sweep",
    cache_policy=COMPUTED - "storage_url",
    persist_result=True,
    **TRAINING_RETRIES,
)
def sweep(
    tensors_url: str,
    pairs: list[tuple[str, str]],
    base: dict,
    config: tuning.SweepConfig,
    storage_url: str,
    name: str,
    ray_address: str | None = None,
) -> dict:
    """One Ray Tune run (``storage_url/name``) over ``pairs``; its trials and best configs.

    Trials validate on fold 0; cross-validation then scores the winners on the other folds
    only (braintl.results.cv_plan), so fold 0's images never rank a model. Fails
    (so nothing is cached) when some pair has no trial that trained.
    """
    artifact = create_progress_artifact(
        0.0, key=f"sweep-{name}", description=f"sweep {name}: trials ended"
    )

    def trials_ended(ended: int, total: int) -> None:
        update_progress_artifact(artifact, 100 * ended / total)
        progress.report(f"trials {name}", ended, total)

    if cluster.uses_jobs(ray_address):
        spec = {
            "tensors_url": tensors_url,
            "pairs": pairs,
            "base": base,
            "sweep": config.model_dump(mode="json"),
            "storage_url": storage_url,
            "name": name,
        }
        result = _as_job(ray_address, "sweep", spec, storage_url, name, trials_ended)
    else:
        result = tuning.run_sweep(
            tensors_url,
            pairs,
            base,
            config,
            storage_url,
            name=name,
            fold=0,
            ray_address=ray_address,
            on_trial_end=trials_ended,
        )
    missing = [f"{b}/{s}" for b, s in pairs if f"{b}/{s}" not in result["best"]]
    if missing:
        errors = sorted({t["error"] for t in result["trials"] if t["error"]})
        raise RuntimeError(f"sweep {name}: no trial of {', '.join(missing)} trained: {errors}")
    return result


@task(
    name="cv-fold",
    cache_policy=COMPUTED - "out_url" - "timeout_s",
    persist_result=True,
    **TRAINING_RETRIES,
)
def train_fold(
    tensors_url: str,
    config: dict,
    fold: int,
    out_url: str,
    num_cpus: float,
    num_gpus: float,
    ray_address: str | None = None,
    timeout_s: float | None = None,
) -> dict:
    """Train ``config`` with ``fold`` held out, as a Ray task; returns its scores record."""
    if cluster.uses_jobs(ray_address):
        spec = {
            "tensors_url": tensors_url,
            "config": config,
            "fold": fold,
            "out_url": out_url,
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "timeout_s": timeout_s,
        }
        return _as_job(ray_address, "fold", spec, out_url)
    return folds.train_fold_on_ray(
        tensors_url,
        config,
        fold,
        out_url,
        num_cpus,
        num_gpus,
        ray_address=ray_address,
        timeout_s=timeout_s,
    )


def _as_job(
    address: str, stage: str, spec: dict, out_url: str, name: str = "", on_trials=None
) -> dict:
    """Run one stage as a Ray job on the cluster, its log lines in this task's log and its
    trial counts (a sweep's) in the progress artifact. The job carries the flow run's id, so
    the flow's hooks stop it when the run is cancelled or fails."""
    logger = get_run_logger()

    def on_log(line: str) -> None:
        if on_trials and line.startswith(cluster.TRIALS_ENDED):
            on_trials(*map(int, line.rsplit(" ", 1)[1].split("/")))
        logger.info(line)

    return cluster.run_job(
        address,
        cluster.job_id(resolve(out_url).join(name).url if name else out_url),
        cluster.entrypoint(stage, spec),
        cluster.result_url(stage, spec),
        metadata={cluster.PREFECT_RUN_KEY: str(flow_run.id)},
        on_log=on_log,
    )
