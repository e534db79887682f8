"""Result stages: the run to work on, its config and results files, and the ``latest`` pointer.

Every stage that writes into a run first confirms the run's lease (renewing it), so a run
whose lease was taken over by another fails here and writes nothing more.
"""

from __future__ import annotations

from prefect import task

from braintl import results, runclaim, runlease
from braintl.storage import resolve
from tasks.data import STORAGE_RETRIES


@task(name="read-latest", **STORAGE_RETRIES)
def read_latest(out_url: str) -> dict | None:
    """The record of the last completed run, or None."""
    return results.read_latest(out_url)


@task(name="claim-run", **STORAGE_RETRIES)
def claim_run(out_url: str, run_key: str, owner: str) -> dict:
    """An interrupted run of the same data and settings to resume, else a new run; its lease
    held for ``owner`` from here on."""
    return runclaim.claim_run(out_url, run_key, owner)


@task(name="write-run-file", **STORAGE_RETRIES)
def write_run_file(run_url: str, name: str, document: dict) -> str:
    """One JSON document of a run: ``config.json`` (parameters, data record, run key),
    ``sweep.json`` (every trial), ``run.json`` (times per stage, versions, hardware)."""
    runlease.confirm(run_url)
    target = resolve(run_url).join(name)
    target.write_json(document)
    return target.url


@task(name="files-exist", **STORAGE_RETRIES)
def all_exist(urls: list[str]) -> bool:
    """Whether every file is still there (a cached record may point at deleted files)."""
    return all(resolve(url).exists() for url in urls)


@task(name="aggregate")
def aggregate(records: list[dict], plan: dict | None = None) -> dict:
    """Mean ± sd over the scored folds per (backbone, strategy); ``plan`` says which."""
    return results.aggregate(records, plan)


@task(name="write-results", **STORAGE_RETRIES)
def write_results(run_url: str, summary: dict) -> dict[str, str]:
    """``results.json``, ``table.csv`` and ``table.md`` under the run."""
    runlease.confirm(run_url)
    return results.write_results(run_url, summary)


@task(name="complete-run", **STORAGE_RETRIES)
def complete_run(run_url: str, record: dict) -> None:
    """The run's completion marker, written after every other file of the run."""
    runlease.confirm(run_url)
    results.complete_run(run_url, record)


@task(name="publish-latest", **STORAGE_RETRIES)
def publish_latest(out_url: str, record: dict) -> bool:
    """Move ``latest.json`` forward to this run; called last, only by a completed run that
    still holds its lease. False: it names a newer run, and stays."""
    runlease.confirm(record["run_url"])
    return results.publish_latest(out_url, record)
