"""Only the URLs braintl means to follow: storage opens file and s3 (configurable), a URL read
from a stored record must lie inside the output root the record is in, and deployed flows
keep their URLs under the roots of the Prefect variable ``braintl_allowed_roots`` (tested in
``test_flow.py``, which has a Prefect server).

The records here point at a real HTTP server on 127.0.0.1 that records every request: what
is refused must also never have been requested."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from braintl.champion import champion_model
from braintl.cli import main
from braintl.errors import UserError
from braintl.publish import load_model, resolve_model_url, warm_start
from braintl.report.collect import load_run
from braintl.storage import PROTOCOLS_ENV, StorageError, resolve


@pytest.fixture
def requests() -> Iterator[tuple[str, list[str]]]:
    """(base URL, requests received) of an HTTP server answering everything with 200."""
    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            received.append(f"{self.command} {self.path}")
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(b"{}")

        do_GET = do_HEAD = do_POST = do_PUT = _answer

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_storage_opens_only_the_allowed_protocols(requests, monkeypatch):
    base, received = requests
    for url in (f"{base}/model", "memory://model", "simplecache::s3://b/model"):
        with pytest.raises(StorageError, match=f"not allowed .*{PROTOCOLS_ENV}"):
            resolve(url)
    assert resolve("s3://b/model").protocol == "s3"
    monkeypatch.setenv(PROTOCOLS_ENV, "file,s3,memory")  # configurable
    assert resolve("memory://model").protocol == "memory"
    assert received == []


def _records(out, target: str) -> None:
    """latest.json and champion.json of ``out`` naming ``target`` as model and run."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"run_id": "20260101T000000Z-aaaaaa", "run_url": target, "model": target}
    (out / "latest.json").write_text(json.dumps(record))
    (out / "champion.json").write_text(json.dumps(record))


def _outside_targets(base: str, tmp_path) -> list[str]:
    elsewhere = tmp_path / "elsewhere" / "model"
    elsewhere.mkdir(parents=True)
    (tmp_path / "out" / "runs").mkdir(parents=True)
    (tmp_path / "out" / "runs" / "link").symlink_to(elsewhere)
    return [
        f"{base}/model",  # an internal server, fetched with the operator's credentials
        str(elsewhere),  # another folder of this machine
        str(tmp_path / "out" / "runs" / ".." / ".." / "elsewhere" / "model"),
        str(tmp_path / "out" / "runs" / "link"),  # a link inside that leads out
    ]


def test_records_pointing_outside_their_root_are_refused_unrequested(requests, tmp_path, capsys):
    base, received = requests
    out = tmp_path / "out"
    for target in _outside_targets(base, tmp_path):
        _records(out, target)
        for follow in (
            lambda: load_model(resolve_model_url("latest", str(out))),
            lambda: load_model(champion_model(str(out))),
            lambda: warm_start("previous", str(out)),
        ):
            with pytest.raises(UserError, match="outside .*refused"):
                follow()
        assert main(["report", str(out)]) != 0
        assert "latest.json names" in capsys.readouterr().err
    assert received == []
    inside = str(out / "runs" / "20260101T000000Z-aaaaaa" / "model")
    _records(out, inside)
    assert resolve_model_url("latest", str(out)) == inside  # the usual case still follows


def test_a_run_whose_results_point_elsewhere_is_refused(requests, tmp_path):
    """The report reads the tensors and fold metrics a run's records name: only in its root."""
    base, received = requests
    run = tmp_path / "out" / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    for tensors, metrics in (
        (f"{base}/tensors", str(run / "folds" / "metrics.json")),
        (str(tmp_path / "out" / "cache" / "t"), f"{base}/metrics.json"),
    ):
        (run / "config.json").write_text(json.dumps({"data": {"tensors_url": tensors}}))
        folds = [{"metrics_url": metrics, "threshold": 0.5, "fold": 1}]
        (run / "results.json").write_text(json.dumps({"models": [{"runs": folds}]}))
        with pytest.raises(UserError, match="outside .*refused"):
            load_run(str(run))
    assert received == []
