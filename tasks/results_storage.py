"""Where the cached stages keep their results and cache records: under the run's output
(``OUT/.prefect/``), as JSON.

The flow sets this from its ``out_url``, not from each worker's Prefect settings: on the Docker
and Kubernetes pools every flow run starts in a fresh container, and a rerun there must find
the prepare, sweep and fold results of the run it resumes wherever that ran. JSON, not Prefect's
default pickle: the stages return small records of URLs and scores, and nothing in the bucket
should run code when read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect.filesystems import RemoteFileSystem

from braintl.storage import resolve, storage_options

RESULTS_DIR = ".prefect"


def shared_results(out_url: str) -> dict[str, Any]:
    """Task options (``with_options``) that persist a stage's result and cache record as JSON
    under ``out_url``/.prefect.

    A remote output becomes a Prefect ``RemoteFileSystem`` block (Prefect takes no unsaved one),
    saved as ``braintl-results-<hash of the URL>`` with the S3 endpoint only: each process's
    S3 client takes the credentials from its own environment, as braintl's storage does."""
    where = resolve(out_url).join(RESULTS_DIR)
    if where.protocol == "file":
        storage: Path | RemoteFileSystem = Path(where.path)
    else:
        storage = RemoteFileSystem(basepath=where.url, settings=storage_options(where.protocol))
        storage.save(
            f"braintl-results-{hashlib.sha256(where.url.encode()).hexdigest()[:12]}", overwrite=True
        )
    return {"result_storage": storage, "result_serializer": "json"}
