"""The report stage: render the run's report and point a Prefect link artifact at it."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact

from braintl import runlease
from braintl.report.build import write_report
from tasks.data import STORAGE_RETRIES


def _link(url: str) -> str:
    """A URL a browser can follow: local paths become file:// URIs."""
    return url if "://" in url else Path(url).resolve().as_uri()


@task(name="report", **STORAGE_RETRIES)
def render_report(run_url: str) -> dict[str, str]:
    """``report/index.html``, ``report.json``, ``table.csv`` and ``table.md`` under the run;
    returns file name → URL. Only while the run holds its lease."""
    runlease.confirm(run_url)
    urls = write_report(run_url)
    create_link_artifact(
        link=_link(urls["index.html"]),
        link_text="report",
        key="retrain-report",
        description=f"the report of run {run_url}",
    )
    return urls
