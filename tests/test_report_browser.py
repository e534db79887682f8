"""The report in a real browser: headless Chromium opens index.html from disk; the rendered
page has the table, every plot and section, and asks nothing of the network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from report_runs import report_runs

from braintl.report.render import PLOTS, SECTIONS

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _artifacts_dir() -> Path:
    root = os.environ.get("BRAINTL_TEST_ARTIFACTS")
    path = Path(root) if root else Path(__file__).resolve().parents[1] / "test-artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing: apt install chromium")
def test_report_renders_offline_in_chromium(tmp_path_factory):
    runs = report_runs(tmp_path_factory)
    index = runs.run_dir("paper") / "report" / "index.html"
    report = json.loads((index.parent / "report.json").read_text())
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
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
            page.screenshot(path=str(_artifacts_dir() / "report.png"), full_page=True)
        finally:
            browser.close()
    assert sections == list(SECTIONS)
    assert rows == [m["model"] for m in report["models"]]
    assert {i["id"] for i in images if i["id"]} >= {f"plot-{k}" for k in PLOTS}
    assert sum(i["cls"] == "gradcam" for i in images) == len(report["explanations"]["cases"])
    assert all(i["complete"] and i["width"] > 0 for i in images), images
    assert summary == report["summary"]["text"]
    assert requests and all(url.startswith(("file:", "data:")) for url in requests), requests
    assert (_artifacts_dir() / "report.png").stat().st_size > 10_000
