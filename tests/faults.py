"""Fault injection for the reliability tests: a TCP proxy that cuts and restores a server, and
the process ids of live Ray actors.

Moto keeps its objects in memory, so a restarted moto server would come back empty; what the
client must survive is the endpoint going away — refused connections for new requests, resets
for open ones — and coming back with its data. The proxy does exactly that to the real server.
"""

from __future__ import annotations

import socket
import struct
import threading

import ray


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; :meth:`cut` makes the endpoint vanish
    (listener closed, open connections reset), :meth:`restore` brings it back on the same port.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
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
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

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
