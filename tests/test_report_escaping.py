"""Names from data (file names, label folders, sweep keys, set names) are text wherever braintl
shows them: in the report page as Chromium builds it, and in the Markdown it writes."""

from __future__ import annotations

import copy
import io
import json
import webbrowser
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from PIL import Image
from report_runs import report_runs

from braintl.cli import main
from braintl.markdown import markdown_escape
from braintl.publish import external_lines
from braintl.report.plots import data_uri
from braintl.report.render import PLOTS, render_html
from braintl.report.tables import to_markdown

HOSTILE = [
    '<img src=x onerror="window.__pwned=1">',
    "<script>window.__pwned=1</script>",
    "**bold** _it_ `code` # heading",
    "[click](javascript:window.__pwned=1) ![i](x.png)",
    "\"'><svg onload=window.__pwned=1>&amp; a|b ~~s~~",
]
NAME = " ".join(HOSTILE)  # one name that carries every attack
# Tags a hostile name would add to the page or to rendered Markdown.
MARKUP = ("<img", "<script", "<svg", "<a ", "<strong", "<em", "<code", "<h1", "<del", "<s>")


def _markdown(text: str) -> str:
    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(text)


@pytest.mark.parametrize("name", HOSTILE + ["line one\n# line two\n- item"])
def test_markdown_escape_leaves_literal_text(name):
    html = _markdown(f"before {markdown_escape(name)} after")
    assert not any(tag in html for tag in MARKUP), html
    text = html.removeprefix("<p>").removesuffix("</p>\n")
    unescaped = text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
    assert unescaped.replace("&amp;", "&") == f"before {' '.join(name.splitlines())} after"


def test_markdown_tables_keep_hostile_names_in_their_cell():
    external = {
        "threshold": 0.5,
        "internal": {"name": "internal test", "url": None, "n": 4, "groups": 4},
        "sources": [{"name": NAME, "url": f"s3://b/{NAME}", "n": 3, "groups": 2}],
    }
    html = _markdown("\n".join(external_lines(external)))
    assert not any(tag in html for tag in MARKUP), html
    assert html.count("<tr>") == 3 and html.count("<td>") == 2 * 6  # no cell split by a |
    row = {"model": "scratch_cnn/full", "best": True, "weights": NAME, "seed_label": NAME,
           "estimand": "x", "cells": {}}  # fmt: skip
    table = to_markdown([row | {"cells": _no_cells()}], "groups", [])
    html = _markdown(table).split("</table>")[0]  # the note below is braintl's own Markdown
    assert html.count("<strong>") == 1 and not any(t in html for t in MARKUP if t != "<strong")
    assert html.count("<td>") == 3 + len(_no_cells())


def _no_cells() -> dict:
    from braintl.report.tables import TABLE_METRICS

    empty = {"test_estimate": None, "test_low": None, "test_high": None, "seed": None}
    return dict.fromkeys(TABLE_METRICS, empty)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return report_runs(tmp_path_factory)  # before Playwright holds this thread's event loop


def _hostile(report: dict) -> dict:
    """The paper run's report with every data-derived name replaced by ``NAME``."""
    report = copy.deepcopy(report)
    data = report["data"]
    data["manifest"] = {
        "per_label": {NAME: 3},
        "usable_per_label": {NAME: 2},
        "quarantined": [{"file": NAME, "reason": NAME, "detail": NAME}],
        "duplicate_groups": [{"group": NAME, "kind": "exact", "labels": [NAME], "members": [NAME]}],
        "label_conflicts": [],
    }
    data["tensors_url"] = NAME
    report["run"]["url"] = NAME
    report["table"][0]["model"] = NAME
    report["comparisons"]["delong"][0]["other"] = NAME
    for case in report["explanations"]["cases"]:
        case["label"] = case["predicted"] = NAME
    trial = {"backbone": NAME, "strategy": "full", "trial_id": "t", "val_auc": 0.5, NAME: NAME}
    report["sweep"] = {NAME: {"trials": [trial], "best": {NAME: {"weights": NAME}}}}
    figure = {"estimate": 0.5, "low": 0.4, "high": 0.6}
    scores = {"auc": figure, "sensitivity": figure, "specificity": figure}
    report["external"] = {
        "threshold": 0.5,
        "method": NAME,
        "internal": {"name": "internal", "url": None, "n": 4, "groups": 4, "scores": scores},
        "sources": [
            {
                "name": NAME,
                "url": NAME,
                "n": 3,
                "groups": 2,
                "scores": scores,
                "copies": [{"file": NAME, "of": [NAME]}],
            },
        ],
    }
    return report


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "grey").save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


@pytest.mark.slow
def test_hostile_names_stay_text_in_chromium(runs, chromium, tmp_path):
    report = json.loads((runs.run_dir("paper") / "report" / "report.json").read_text())
    report = _hostile(report)
    cases = len(report["explanations"]["cases"])
    images = dict.fromkeys([*PLOTS, *(f"gradcam-{i}" for i in range(cases))], _png())
    page_file = tmp_path / "index.html"
    page_file.write_text(render_html(report, images))
    dialogs: list[str] = []
    page = chromium.new_page()
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(page_file.as_uri(), wait_until="load")
    page.wait_for_timeout(200)  # an onerror handler would have run by now

    def texts(selector: str) -> list[str]:
        return page.eval_on_selector_all(selector, "els => els.map(e => e.textContent)")

    assert page.evaluate("window.__pwned") is None and not dialogs
    counts = page.evaluate(
        "sel => sel.map(s => document.querySelectorAll(s).length)",
        ["script", "svg", "strong", "em", "a[href^='javascript']", "img"],
    )
    assert counts == [0, 0, 0, 0, 0, len(images)]
    assert texts("#quarantine tbody td") == [NAME] * 3
    assert texts("#label-counts tbody td")[0] == NAME
    assert NAME in texts(".sweep-trials thead th")
    assert page.get_attribute(".sweep-trials", "data-sweep") == NAME
    assert texts("#external-table tbody tr:nth-child(2) td")[0] == NAME + NAME  # name, url
    assert page.get_attribute("#table-1-table tbody tr", "data-model") == NAME
    assert page.get_attribute("#delong-table tbody tr", "data-other") == NAME
    value = page.get_attribute("#table-1-table td[data-metric=auc] .test", "data-value")
    assert json.loads(value) == report["table"][0]["cells"]["auc"]["test_estimate"]


@pytest.mark.slow
def test_open_renders_a_local_page(runs, monkeypatch, capsys):
    """``--open`` shows a page rendered here, not the run's stored index.html."""
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", opened.append)  # the OS's browser, not braintl
    run = runs.run_dir("paper")
    assert main(["report", str(run), "--open"]) == 0
    (uri,) = opened
    local = capsys.readouterr().out.splitlines()[-1].removeprefix("opening ")
    assert uri.startswith("file://") and uri.endswith(local) and not local.startswith(str(run))
    page = Path(local).read_text(encoding="utf-8")
    assert 'id="table-1-table"' in page and page == (run / "report" / "index.html").read_text()
