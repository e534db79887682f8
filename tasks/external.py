"""External-validation stages: screen the external sets before training, score them after
publishing (see :mod:`braintl.external`)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from braintl import external, publish, runlease
from braintl.data.prepare import DataConfig
from tasks.caching import COMPUTED
from tasks.data import STORAGE_RETRIES


@task(name="screen-external", cache_policy=COMPUTED, persist_result=True, **STORAGE_RETRIES)
def screen_external(
    data_url: str, external_urls: list[str], config: DataConfig, snapshots: list[str]
) -> list[dict]:
    """List, decode and de-duplicate the external sets against the development data; a bad
    folder fails here, before any training. Cached, like prepare, on the inputs and the
    ``snapshots`` of the development data and each external set (see ``tasks.data.snapshot``):
    a night with nothing changed decodes nothing again."""
    screened = external.screen(data_url, external_urls, config)
    for source in screened:
        print(
            f"external set {source['name']} ({source['url']}): {len(source['members'])} scans "
            f"kept {source['per_label']}, {source['copies_removed']} copies of development "
            f"scans removed, {len(source['quarantined'])} unusable"
        )
    return screened


@task(name="validate-external", **STORAGE_RETRIES)
def validate_external(run_url: str, model_url: str, tensors_url: str, screened: list[dict]) -> dict:
    """Score the published model on its internal test set and each external set; write
    ``external.json``, add the summary to ``results.json`` and the model card, and show it as
    the ``external-validation`` artifact. Only while the run holds its lease."""
    runlease.confirm(run_url)
    validation = external.validate(model_url, tensors_url, screened)
    brief = external.write(run_url, validation)
    publish.note_external(model_url, brief)
    create_markdown_artifact(
        "\n".join(publish.external_lines(brief)),
        key="external-validation",
        description=f"the published model of {run_url} on other sources",
    )
    return brief
