"""The report in a real browser: headless Chromium opens index.html from disk; the rendered
page has the table, every plot and section, and asks nothing of the network."""

from __future__ import annotations

import json

import pytest
from artifacts import artifacts_dir
from report_runs import report_runs

from braintl.report.render import PLOTS, SECTIONS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run before the browser starts: Playwright's sync API holds an event loop in this thread,
    under which Prefect's calls would return coroutines."""
    return report_runs(tmp_path_factory)


def test_report_renders_offline_in_chromium(runs, chromium):
    index = runs.run_dir("paper") / "report" / "index.html"
    report = json.loads((index.parent / "report.json").read_text())
    requests: list[str] = []
    page = chromium.new_page(viewport={"width": 1400, "height": 900})
    page.on("request", lambda request: requests.append(request.url))
    page.goto(index.as_uri(), wait_until="load")
    sections = page.eval_on_selector_all("section", "els => els.map(e => e.id)")
    rows = page.eval_on_selector_all(
        "#table-1-table tbody tr", "els => els.map(e => e.dataset.model)"
    )
    images = page.eval_on_selector_all(
        "img",
        "els => els.map(e => ({id: e.id, cls: e.className, complete: e.complete, "
        "width: e.naturalWidth}))",
    )
    summary = page.inner_text("#summary-text")
    screenshot = artifacts_dir() / "report.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert sections == list(SECTIONS)
    assert rows == [m["model"] for m in report["models"]]
    assert {i["id"] for i in images if i["id"]} >= {f"plot-{k}" for k in PLOTS}
    assert sum(i["cls"] == "gradcam" for i in images) == len(report["explanations"]["cases"])
    assert all(i["complete"] and i["width"] > 0 for i in images), images
    assert summary == report["summary"]["text"]
    assert requests and all(url.startswith(("file:", "data:")) for url in requests), requests
    assert screenshot.stat().st_size > 10_000
