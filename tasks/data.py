"""Data stages: where the scans are, what they look like now, and the cached tensor build."""

from __future__ import annotations

import hashlib
import json
import sys

from prefect import task
from prefect.task_engine import TaskRunTimeoutError
from pydantic import ValidationError

from braintl.data.phantoms import data_or_phantoms
from braintl.data.prepare import DataConfig, prepare
from braintl.data.provenance import manifest_bytes
from braintl.errors import UserError
from braintl.storage import StorageError, resolve
from tasks.caching import COMPUTED


def worth_retrying(task, task_run, state) -> bool:
    """Retry what another try can fix (storage outages, lost workers, unexpected errors), not a
    user's mistake: a wrong folder, an over-budget data set or an invalid setting fails the same
    way, only later; nor a timeout (braintl's StageTimeout is a UserError): it would wait again."""
    error = state.result(raise_on_failure=False)
    if isinstance(error, StorageError):
        return True
    return not isinstance(error, UserError | ValidationError | TaskRunTimeoutError)


STORAGE_RETRIES = {
    "retries": 3,
    "retry_delay_seconds": [1, 4, 10],
    "retry_condition_fn": worth_retrying,
}


@task(name="data-source", **STORAGE_RETRIES)
def data_source(data_url: str | None, out_url: str) -> str:
    """The data URL, or seeded synthetic phantoms written once under ``out_url``."""
    return data_or_phantoms(data_url, out_url, sys.stdout)


@task(name="snapshot", **STORAGE_RETRIES)
def snapshot(data_url: str, manifest_url: str | None = None) -> str:
    """A cheap signature of the files under ``data_url`` (names, sizes, modification stamps)
    and of the manifest's content, wherever it lives.

    It is part of the prepare cache key, so changed data or a changed manifest misses the cache.
    """
    root = resolve(data_url)
    entries = root.fs.find(root.path, detail=True)
    stamps = sorted(
        (name, info.get("size"), str(info.get("mtime") or info.get("LastModified") or ""))
        for name, info in entries.items()
    )
    manifest = hashlib.sha256(manifest_bytes(manifest_url)).hexdigest() if manifest_url else ""
    return hashlib.sha256(json.dumps([stamps, manifest]).encode()).hexdigest()[:16]


@task(
    name="prepare",
    cache_policy=COMPUTED,
    persist_result=True,
    **STORAGE_RETRIES,
)
def prepare_data(data_url: str, out_url: str, config: DataConfig, snapshot: str) -> dict:
    """Decode, check, split, augment and cache tensors; returns a small record, no pixels."""
    prepared = prepare(data_url, out_url, config)
    for note in prepared.manifest.notes():  # pre-augmented data, a too loose near distance
        print(f"WARNING: {note}")
    meta = {k: v for k, v in prepared.meta.items() if k != "files"}
    return {
        "tensors_url": prepared.tensors_url,
        "key": prepared.key,
        "reused": prepared.reused,
        "fingerprint": prepared.manifest.fingerprint,
        "snapshot": snapshot,
        "pre_augmented": prepared.manifest.summary()["pre_augmented"],
        "provenance": prepared.manifest.provenance_summary(),
        "meta": meta,
    }
