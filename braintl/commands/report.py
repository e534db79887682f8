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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render the HTML report of a run")
    p.add_argument(
        "run_url", metavar="RUN_URL", help="a run, OUT_URL/runs/<run_id>, or OUT_URL (its latest)"
    )
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
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
    from braintl.report import write_report  # matplotlib and torch load only for this command

    urls = write_report(run_url_of(args.run_url))
    if args.json:
        print_json(urls)
    else:
        print(f"report: {urls['index.html']}")
    if args.open:
        webbrowser.open(_local_uri(urls["index.html"]))
    return 0


def _local_uri(url: str) -> str:
    """A file:// URI of the page; a remote page is copied to a temporary file first (it is
    self-contained, so the copy shows everything)."""
    loc = resolve(url)
    if loc.protocol == "file":
        return Path(loc.path).as_uri()
    target = Path(tempfile.mkdtemp(prefix="braintl-report-")) / "index.html"
    target.write_bytes(loc.read_bytes())
    return target.as_uri()
