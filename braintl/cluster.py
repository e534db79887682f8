"""Cluster work as Ray jobs: the way Ray recommends running Tune and Train on a remote cluster.

Ray Client (``ray://``) "may not work as expected" for Ray Tune and Ray Train (Ray's docs); a
Ray job runs the driver on the cluster itself (on a worker node: see ``DRIVER_CPUS``), where it
survives the submitter. So a flow off the cluster submits each training stage (a sweep, a fold)
as one job to the dashboard address (``http://head:8265``, the token from ``RAY_AUTH_TOKEN`` as
for every Ray API), follows its logs and maps its final state to a result or an error. A flow
runner inside the cluster keeps the direct path: ``ray_address`` a GCS address (``head:6379`` or
``auto``).

A job's submission id derives from the output it writes (which holds the braintl run id), so a
flow that crashed and resumes its run re-attaches to the job still running, reuses one that
succeeded and submits a numbered next attempt after one that failed or was stopped.

The job's own side is ``python -m braintl.cluster sweep|fold SPEC``: it runs the stage against
the cluster it is on and writes its record next to its output, where the submitter reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable

from braintl.errors import UserError
from braintl.storage import resolve

JOBS_SCHEMES = ("http://", "https://")
RESULT_FILE = "job-result.json"
USER_ERROR_EXIT = 2  # the job's exit status for a UserError: retrying will not help
POLL_S = 2.0
RUNNING = {"PENDING", "RUNNING"}
PREFECT_RUN_KEY = "prefect_flow_run_id"
# What each job's driver reserves. Ray runs a job's driver on the head unless its entrypoint
# asks for resources; with them it goes to a node that has them, never a head started with
# ``num-cpus: 0``. A driver is a Python with torch and braintl (0.7 GB resident, measured): 45
# fold drivers on an 8 GiB head would not fit. Its CPU share is small because a fold's driver
# mostly waits on its Ray task, and a sweep's (Tune's loop) on its trials.
DRIVER_CPUS = 0.25
DRIVER_MEMORY = 1024**3


def uses_jobs(address: str | None) -> bool:
    """True when ``address`` is a Ray dashboard (Jobs API) rather than a GCS address."""
    return bool(address) and address.startswith(JOBS_SCHEMES)


def address_problem(address: str | None) -> str | None:
    """Why ``ray_address`` cannot be used, with the address to give instead; or None."""
    if address and address.startswith("ray://"):
        host = address.removeprefix("ray://").split(":")[0] or "head"
        return (
            f"ray_address={address!r} is a Ray Client address, which Ray's documentation says "
            "may not work for Ray Tune and Train: give the cluster's dashboard address "
            f"(http://{host}:8265; braintl submits Ray jobs there) or, from inside the cluster, "
            f"its GCS address ({host}:6379)"
        )
    return None


def storage_problem(name: str, url: str | None, address: str | None) -> str | None:
    """Why ``url`` cannot serve a run on the cluster at ``address`` (a local path is on one
    machine's disk, not on the nodes'), or None."""
    if not address or url is None or resolve(url).protocol != "file":
        return None
    return (
        f"{name}={url!r} is a local path, but ray_address={address!r} runs the work on the "
        "cluster's nodes, which do not read this machine's disk: give a URL every node reads "
        "(s3://bucket/prefix, with AWS_* on every node), or leave ray_address unset to run here"
    )


def job_id(out_url: str) -> str:
    """The submission id of the job writing ``out_url``: readable (the path after ``runs/``,
    so the run id and the stage) and unique (a hash of the whole URL)."""
    url = resolve(out_url).url
    tail = url.split("/runs/", 1)[-1]
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", tail).strip("-")[-80:]
    return f"braintl-{slug}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def entrypoint(stage: str, spec: dict) -> str:
    """The job's command: this module on the cluster's own Python (the braintl image)."""
    return f"python -m braintl.cluster {stage} {shlex.quote(json.dumps(spec, sort_keys=True))}"


class JobFailed(RuntimeError):
    """A Ray job ended FAILED or STOPPED; the message carries Ray's reason and the log tail."""


def client(address: str):
    """A Jobs API client for the dashboard at ``address``, sending ``RAY_AUTH_TOKEN`` when set.

    The header is set here rather than left to Ray: Ray reads ``RAY_AUTH_MODE`` once per process,
    when it is first imported, so a process that imported Ray before the variable was set (a
    worker serving several flows, a test runner) would otherwise send no token."""
    import ray.exceptions
    from ray.job_submission import JobSubmissionClient

    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except (ConnectionError, ray.exceptions.AuthenticationError) as error:
        raise UserError(
            f"cannot reach the Ray Jobs API at {address} ({error}): check ray_address (the "
            "dashboard, port 8265); a cluster with token authentication (Ray's default) needs "
            "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (`ray get-auth-token` on its head) here"
        ) from error


def submit(jobs, submission_id: str, command: str, **options) -> str:
    """Submit ``command`` as a job whose driver runs on a worker node (``DRIVER_*`` reserved);
    ``options``: more of ``JobSubmissionClient.submit_job``'s (metadata, runtime_env)."""
    return jobs.submit_job(
        entrypoint=command,
        submission_id=submission_id,
        entrypoint_num_cpus=DRIVER_CPUS,
        entrypoint_memory=DRIVER_MEMORY,
        **options,
    )


def _attempts(jobs, base: str) -> list:
    """The jobs submitted for ``base`` (``base``, ``base-2``, ...), oldest attempt first."""
    pattern = re.compile(rf"{re.escape(base)}(?:-(\d+))?")
    found = [(pattern.fullmatch(j.submission_id or ""), j) for j in jobs]
    return [j for m, j in sorted((int(m[1] or 1), j) for m, j in found if m)]


def run_job(
    address: str,
    base_id: str,
    command: str,
    result_url: str,
    metadata: dict[str, str] | None = None,
    on_log: Callable[[str], None] = print,
    poll_s: float = POLL_S,
) -> dict:
    """Run ``command`` as the Ray job ``base_id`` (or re-attach to it), pass its new log lines
    to ``on_log`` as they come, and return the JSON record it wrote at ``result_url``.

    A job already running under this id is followed, not duplicated; one that succeeded is
    not run again; after a failed or stopped one the next attempt is ``base_id-2``, ``-3``...
    An interruption of the wait (a task or flow timeout, a cancellation) stops the job, so it
    holds no GPU for a run that is gone. A job that fails raises :class:`JobFailed`
    (:class:`UserError` when the job reported one).
    """
    jobs = client(address)
    attempts = _attempts(jobs.list_jobs(), base_id)
    last = attempts[-1] if attempts else None
    status = str(last.status.value) if last else None
    if status in RUNNING:
        submission_id = last.submission_id
        started = f"re-attached to Ray job {submission_id} ({status}) at {address}"
    elif status == "SUCCEEDED" and resolve(result_url).exists():
        on_log(f"Ray job {last.submission_id} already succeeded: its record is reused")
        return resolve(result_url).read_json()
    else:
        submission_id = base_id if not attempts else f"{base_id}-{len(attempts) + 1}"
        submit(jobs, submission_id, command, metadata=metadata)
        started = f"submitted Ray job {submission_id} to {address}"
    try:
        on_log(started)
        info = _follow(jobs, submission_id, on_log, poll_s)
    except BaseException:
        jobs.stop_job(submission_id)
        on_log(f"stopped Ray job {submission_id}")
        raise
    if info.status.value != "SUCCEEDED":
        reason = (info.message or "").strip().splitlines()
        problem = f"Ray job {submission_id} {info.status.value}: " + " | ".join(reason[-5:])
        raise (UserError if info.driver_exit_code == USER_ERROR_EXIT else JobFailed)(problem)
    return resolve(result_url).read_json()


def _follow(jobs, submission_id: str, on_log: Callable[[str], None], poll_s: float):
    """Poll until the job ends, passing on each log line once; the final JobInfo."""
    shown = 0
    while True:
        info = jobs.get_job_info(submission_id)
        lines = jobs.get_job_logs(submission_id).splitlines()
        for line in lines[shown:]:
            on_log(line)
        shown = len(lines)
        if info.status.is_terminal():
            return info
        time.sleep(poll_s)


def stop_jobs(address: str, **metadata: str) -> list[str]:
    """Stop every unfinished job whose metadata holds ``metadata`` (a flow run's, when it is
    cancelled or fails); the submission ids stopped."""
    jobs = client(address)
    stopped = []
    for job in jobs.list_jobs():
        mine = all((job.metadata or {}).get(k) == v for k, v in metadata.items())
        if mine and job.status.value in RUNNING and job.submission_id:
            jobs.stop_job(job.submission_id)
            stopped.append(job.submission_id)
    return stopped


def _sweep(spec: dict) -> dict:
    from braintl.tuning import SweepConfig, run_sweep

    def progress(ended: int, total: int) -> None:
        print(f"{TRIALS_ENDED} {ended}/{total}", flush=True)

    return run_sweep(
        spec["tensors_url"],
        spec["pairs"],
        spec["base"],
        SweepConfig(**spec["sweep"]),
        spec["storage_url"],
        name=spec["name"],
        ray_address="auto",
        on_trial_end=progress,
    )


def _fold(spec: dict) -> dict:
    from braintl.folds import train_fold_on_ray

    return train_fold_on_ray(**spec, ray_address="auto")


TRIALS_ENDED = "braintl: trials ended"
STAGES = {"sweep": (_sweep, "storage_url"), "fold": (_fold, "out_url")}


def result_url(stage: str, spec: dict) -> str:
    """Where the job of ``stage`` writes its record: beside the stage's own output."""
    folder = resolve(spec[STAGES[stage][1]])
    return folder.join(f"{spec['name']}-{RESULT_FILE}" if stage == "sweep" else RESULT_FILE).url


def main(argv: list[str]) -> int:
    """The job's side: run one stage on this cluster and write its record."""
    stage, spec = argv[0], json.loads(argv[1])
    try:
        record = STAGES[stage][0](spec)
    except UserError as error:
        print(f"braintl: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    resolve(result_url(stage, spec)).write_json(record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
