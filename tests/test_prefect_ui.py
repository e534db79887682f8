"""The Prefect UI in a real browser (Debian's headless Chromium through Playwright): a custom
run of adhoc-retrain from its deployment page, with one model removed from the form, runs to
Completed on the real worker and lists its artifacts. Screenshots go to the test artifacts."""

from __future__ import annotations

import pytest
from artifacts import artifacts_dir
from playwright.sync_api import Page
from prefect_services import api_client, wait_for_final_state


def _remove_list_item(page: Page, value: str) -> None:
    """Delete the list entry of the run form whose text field holds ``value``."""
    for item in page.locator(".schema-form-property-array-item").all():
        field = item.locator("textarea")
        if field.count() and field.first.input_value() == value:
            item.locator(".schema-form-property-array-item__control > button").click()
            return
    raise AssertionError(f"no list entry {value!r} in the run form")


@pytest.mark.slow
def test_custom_run_from_the_deployment_page(prefect_stack, chromium):
    shots = artifacts_dir("prefect-ui")
    with api_client(prefect_stack.api_url) as client:
        deployment = client.read_deployment_by_name("retrain/adhoc-retrain")
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)  # the shared 2-core machine renders slowly
    page.goto(f"{prefect_stack.ui_url}/deployments/deployment/{deployment.id}")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run").click()
    page.get_by_text("Backbones (Optional)").wait_for()
    run_name = page.locator("input").first.input_value()
    _remove_list_item(page, "mobilenet_v2")
    page.screenshot(path=shots / "1-custom-run-form.png", full_page=True)
    page.get_by_role("button", name="Submit").click()

    page.get_by_role("link", name=run_name).first.click()
    page.wait_for_url("**/runs/flow-run/**")
    flow_run_id = page.url.rsplit("/", 1)[-1].split("?")[0]
    final = wait_for_final_state(flow_run_id, prefect_stack)
    assert final.state.is_completed(), final.state
    assert final.parameters["params"]["backbones"] == ["scratch_cnn"]
    page.locator(".state-badge", has_text="Completed").first.wait_for()
    page.screenshot(path=shots / "2-flow-run-completed.png", full_page=True)
    page.locator("li.p-tab", has_text="Artifacts").click()
    for key in ("retrain-results", "retrain-summary"):
        page.get_by_text(key).first.wait_for()
    page.screenshot(path=shots / "3-flow-run-artifacts.png", full_page=True)
