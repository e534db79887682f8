"""``braintl report RUN_URL [--open]``: (re-)render the report of an existing run, for example
after a template change, and print where it is."""

from __future__ import annotations

import argparse
import tempfile
import webbrowser
from pathlib import Path

from braintl.commands.output import print_json
from braintl.results import LATEST
from braintl.storage import resolve
from braintl.urls import within


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_url", metavar="RUN_URL", help="a run, OUT_URL/runs/<run_id>, or OUT_URL (its latest)"
    )
    p.add_argument(
        "--open",
        action="store_true",
        help="render the page into a local temporary folder too and open that in a web browser",
    )
    p.add_argument("--json", action="store_true", help="print the files written as JSON")
    p.set_defaults(handler=report_command)


def run_url_of(url: str) -> str:
    """``url`` itself, or the run ``OUT_URL/latest.json`` names when ``url`` is an output root."""
    loc = resolve(url)
    latest = loc.join(LATEST)
    if not loc.join("config.json").exists() and latest.exists():
        return within(latest.read_json()["run_url"], loc.url, latest.url)
    return loc.url


def report_command(args: argparse.Namespace) -> int:
    # matplotlib and torch load only for this command
    from braintl.report.build import build_report, write_report_files

    run_url = run_url_of(args.run_url)
    report, images = build_report(run_url)
    urls = write_report_files(run_url, report, images)
    if args.json:
        print_json(urls)
    else:
        print(f"report: {urls['index.html']}")
    if args.open:
        page = local_page(report, images)
        print(f"opening {page}")
        webbrowser.open(page.as_uri())
    return 0


def local_page(report: dict, images: dict[str, str]) -> Path:
    """The page rendered here, from the report document written as report.json, into a new
    private temporary folder: the browser opens a file braintl just wrote through its escaping
    templates, never an HTML file read back from storage that someone else could have edited."""
    from braintl.report.render import render_html

    target = Path(tempfile.mkdtemp(prefix="braintl-report-")) / "index.html"
    target.write_text(render_html(report, images), encoding="utf-8")
    return target
