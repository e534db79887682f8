"""One code path for every storage URL: local paths, ``file://`` and ``s3://`` through fsspec.

S3 endpoints and credentials come from the standard AWS environment variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), never from code, so the same
URL works against AWS, MinIO, moto or any other S3-compatible server.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from braintl.errors import UserError

COMPLETE_MARKER = "_COMPLETE.json"


class StorageError(UserError):
    """Storage could not be reached or read; the message names the URL and the fix."""


def _storage_options(protocol: str) -> dict[str, Any]:
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options: dict[str, Any] = {}
        if endpoint:
            options["endpoint_url"] = endpoint
        return options
    return {}


@dataclass(frozen=True)
class Location:
    """A URL resolved to a filesystem and a path inside it."""

    fs: fsspec.AbstractFileSystem
    path: str
    url: str

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        return Location(self.fs, path, self._unstrip(path))

    def _unstrip(self, path: str) -> str:
        return self.fs.unstrip_protocol(path) if self.protocol != "file" else path

    @property
    def protocol(self) -> str:
        proto = self.fs.protocol
        return proto[0] if isinstance(proto, tuple) else proto

    def exists(self) -> bool:
        return guarded(self.url, self.fs.exists, self.path)

    def read_bytes(self, limit: int | None = None) -> bytes:
        """The whole object, or at most ``limit + 1`` bytes of it: a caller that gets more
        than ``limit`` knows the object is over its limit without holding all of it."""
        if limit is None:
            return guarded(self.url, self.fs.cat_file, self.path)
        return guarded(self.url, self._read_at_most, limit + 1)

    def _read_at_most(self, size: int) -> bytes:
        with self.fs.open(self.path, "rb") as f:
            return f.read(size)

    def write_bytes(self, data: bytes) -> None:
        """Write a whole object; a local file goes through a temporary name, never half-seen."""
        if self.protocol != "file":
            try:
                guarded(self.url, self.fs.pipe_file, self.path, data)
            except FileNotFoundError as exc:
                raise StorageError(
                    f"{self.url}: cannot write, the bucket does not exist ({exc}). Create it "
                    "first or fix the output URL."
                ) from exc
            return
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            os.makedirs(posixpath.dirname(self.path), exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StorageError(
                f"{self.url}: cannot write ({exc.strerror or exc}). Choose an output location "
                "that is a writable folder, with free space."
            ) from exc

    def download(self, path: str) -> None:
        """Copy this object to the local file ``path`` without holding it in memory."""
        guarded(self.url, self.fs.get_file, self.path, path)

    def read_json(self) -> Any:
        return json.loads(self.read_bytes())

    def write_json(self, obj: Any) -> None:
        self.write_bytes(json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_array(self) -> np.ndarray:
        if self.protocol == "file":
            return np.load(self.path, allow_pickle=False)
        return np.load(io.BytesIO(self.read_bytes()), allow_pickle=False)

    def write_array(self, array: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        self.write_bytes(buf.getvalue())

    def is_complete(self) -> bool:
        """True when a writer finished this folder (see :func:`mark_complete`)."""
        return self.join(COMPLETE_MARKER).exists()

    def mark_complete(self, info: dict[str, Any] | None = None) -> None:
        """Written last: readers trust a folder only once this marker exists."""
        self.join(COMPLETE_MARKER).write_json(info or {})


def _s3_connection_errors() -> tuple[type[Exception], ...]:
    """botocore's "endpoint unreachable" errors, which are no OSError (s3fs passes them on)."""
    try:
        from botocore.exceptions import ConnectionError as EndpointError
        from botocore.exceptions import HTTPClientError
    except ImportError:
        return ()
    return (EndpointError, HTTPClientError)


def guarded(url: str, func, *args):
    """``func(*args)`` with storage failures as :class:`StorageError` naming ``url`` and the fix;
    a missing file stays FileNotFoundError."""
    try:
        return func(*args)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise
    except PermissionError as exc:
        raise StorageError(
            f"{url}: permission denied ({exc}). Check the credentials in AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or the file permissions."
        ) from exc
    except (OSError, ConnectionError, *_s3_connection_errors()) as exc:
        raise StorageError(
            f"{url}: storage unreachable ({type(exc).__name__}: {exc}). Check that the server is "
            "running and that AWS_ENDPOINT_URL points at it."
        ) from exc


def resolve(url: str | os.PathLike[str]) -> Location:
    """Resolve a local path, ``file://`` or ``s3://`` URL to a :class:`Location`."""
    url = os.fspath(url)
    protocol, _ = fsspec.core.split_protocol(url)
    protocol = protocol or "file"
    try:
        fs = fsspec.filesystem(protocol, **_storage_options(protocol))
    except ImportError as exc:
        raise StorageError(
            f"{url}: the {protocol!r} protocol needs a package that is not installed ({exc}). "
            "Install it (s3://: pip install s3fs) or use a local path."
        ) from exc
    except ValueError as exc:
        raise StorageError(
            f"{url}: unsupported storage protocol {protocol!r} ({exc}). "
            "Use a local path, file:// or s3://."
        ) from exc
    path = fs._strip_protocol(url)
    if protocol == "file":
        path = os.path.abspath(path)
        url = path
    return Location(fs, path, url)
