"""Fault injection for the reliability tests: a TCP proxy that cuts and restores a server (or
rewrites what clients send it), and the process ids of live Ray actors.

Moto keeps its objects in memory, so a restarted moto server would come back empty; what the
client must survive is the endpoint going away — refused connections for new requests, resets
for open ones — and coming back with its data. The proxy does exactly that to the real server.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Callable

import ray

CONDITION_HEADERS = re.compile(rb"(?im)^if-(none-)?match:[^\r\n]*\r\n")


def strip_conditions(request: bytes) -> bytes:
    """An S3 server that ignores conditional writes, as older S3-compatible servers do: the
    ``If-None-Match`` and ``If-Match`` headers never reach it (moto checks no signatures).
    Requests here are small, so their headers arrive in one chunk."""
    return CONDITION_HEADERS.sub(b"", request)


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; :meth:`cut` makes the endpoint vanish
    (listener closed, open connections reset), :meth:`restore` brings it back on the same port;
    :meth:`cut_on` does it the moment a client sends a given request. ``rewrite`` changes each
    chunk a client sends before it reaches the server.
    """

    def __init__(self, target_port: int, rewrite: Callable[[bytes], bytes] | None = None):
        self.target_port = target_port
        self.rewrite = rewrite
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._trigger: tuple[bytes, float | None] | None = None
        self.times: dict[str, float] = {}
        self.port = self._listen(0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self, port: int) -> int:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener.getsockname()[1]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # the listener was closed by cut()
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(src, dst, src is client), daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and self._triggered(data):
                    return
                if from_client and self.rewrite:
                    data = self.rewrite(data)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def cut_on(self, request: bytes, outage: float | None) -> None:
        """Cut when a client sends ``request`` (e.g. ``b"PUT /bucket/key"``), which never
        reaches the server; restore ``outage`` seconds later, or never when None. The moments
        land in ``times["cut"]`` and ``times["restored"]`` (``time.perf_counter()``)."""
        self.times = {}
        self._trigger = (request, outage)

    def _triggered(self, data: bytes) -> bool:
        with self._lock:
            trigger = self._trigger
            if trigger is None or trigger[0] not in data:
                return False
            self._trigger = None
        self.cut()
        self.times["cut"] = time.perf_counter()
        if trigger[1] is not None:
            threading.Timer(trigger[1], self._restore_timed).start()
        return True

    def _restore_timed(self) -> None:
        self.restore()
        self.times["restored"] = time.perf_counter()

    def cut(self) -> None:
        """New connections are refused and open ones reset, as when the server dies."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            listener.close()
        with self._lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            try:  # linger 0: close() sends RST, the peer sees "connection reset"
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass

    def restore(self) -> None:
        if self._listener is None:
            self._listen(self.port)

    def close(self) -> None:
        self.cut()


def actor_pids(class_name: str) -> list[int]:
    """Process ids of the live Ray actors of ``class_name`` (Tune trials are ``ImplicitFunc``).

    Read from the GCS actor table: ``ray.util.state.list_actors`` would need the dashboard and
    ``ray[default]``, which a test cluster does not run.
    """
    actors = ray._private.state.actors().values()
    return [
        a["Pid"]
        for a in actors
        if a["ActorClassName"] == class_name and a["State"] == "ALIVE" and a["Pid"]
    ]
