"""A real HTTP server on 127.0.0.1 that records every POST, standing in for the alert webhook:
tests wait until the post they expect arrives (woken by its arrival, not by polling)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Post:
    path: str
    content_type: str | None
    body: dict
    received: datetime


class WebhookRecorder:
    def __init__(self) -> None:
        self.url = ""  # known once the server has its port
        self.posts: list[Post] = []
        self._arrived = threading.Condition()

    def record(self, post: Post) -> None:
        with self._arrived:
            self.posts.append(post)
            self._arrived.notify_all()

    def wait_for(self, wanted: Callable[[dict], bool], timeout: float) -> Post:
        """The first post whose JSON body is ``wanted``, once it arrived; an error listing what
        did arrive after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found = next((p for p in self.posts if wanted(p.body)), None)
                left = deadline - time.monotonic()
                if found or left <= 0:
                    break
                self._arrived.wait(left)
        if found is None:
            bodies = [p.body for p in self.posts]
            raise TimeoutError(f"no matching post within {timeout} s; received: {bodies}")
        return found


def _handler(recorder: WebhookRecorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"unparsed": raw.decode(errors="replace")}
            recorder.record(
                Post(self.path, self.headers.get("Content-Type"), body, datetime.now(UTC))
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:  # quiet: the posts are the record
            pass

    return Handler


@contextmanager
def webhook_recorder() -> Iterator[WebhookRecorder]:
    recorder = WebhookRecorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder))
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}/braintl-alerts"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
