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
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec
import numpy as np

from braintl.errors import UserError

COMPLETE_MARKER = "_COMPLETE.json"
# Storage protocols braintl opens (comma-separated); any other is refused before it is used.
# Stored records name URLs too, so one pointing at http:// must not make braintl fetch it.
PROTOCOLS_ENV = "BRAINTL_PROTOCOLS"
DEFAULT_PROTOCOLS = "file,s3"
_ALIASES = {"local": "file", "s3a": "s3"}  # fsspec's other names for the same file systems


class StorageError(UserError):
    """Storage could not be reached or read; the message names the URL and the fix."""


def storage_options(protocol: str) -> dict[str, Any]:
    """fsspec options of ``protocol``: an S3 endpoint from the environment, never credentials
    (each process's S3 client finds those in its own environment)."""
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

    @property
    def parent(self) -> Location:
        path = posixpath.dirname(self.path.rstrip("/"))
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
        self._replace_local(data)

    def _replace_local(self, data: bytes | Callable[[BinaryIO], None]) -> None:
        try:
            local_replace(self.path, data)
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
        """A local file is written straight from ``array`` (no in-memory copy of a cache that
        may take gigabytes), through the same fsynced temporary file as :meth:`write_bytes`."""
        if self.protocol == "file":
            self._replace_local(lambda fh: np.save(fh, array, allow_pickle=False))
            return
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        self.write_bytes(buf.getvalue())

    def is_complete(self) -> bool:
        """True when a writer finished this folder (see :func:`mark_complete`)."""
        return self.join(COMPLETE_MARKER).exists()

    def mark_complete(self, info: dict[str, Any] | None = None) -> None:
        """Written last: readers trust a folder only once this marker exists."""
        self.join(COMPLETE_MARKER).write_json(info or {})


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once: setting it is process-wide


def local_temporary(path: str, data: bytes | Callable[[BinaryIO], None]) -> str:
    """A new file beside ``path`` holding ``data`` (or what ``data(file)`` writes), on disk, to
    be renamed or linked into place.

    Its name is unique (``mkstemp`` in the target folder, so the rename stays on one file
    system), so concurrent writers of one path never share a temporary file; it is fsynced
    before the caller renames it, so a crash leaves the old or the new content, never an empty
    file under the final name. Permissions are what ``open`` would give (mkstemp's 0600 would
    hide outputs from the operator's group)."""
    folder, name = posixpath.split(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def local_replace(path: str, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Replace the local file ``path`` by ``data`` whole, through :func:`local_temporary`."""
    tmp = local_temporary(path, data)
    try:
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise


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


def allowed_protocols() -> set[str]:
    """The protocols :func:`resolve` accepts: ``$BRAINTL_PROTOCOLS``, else file and s3."""
    given = os.environ.get(PROTOCOLS_ENV) or DEFAULT_PROTOCOLS
    return {_ALIASES.get(p.strip(), p.strip()) for p in given.split(",") if p.strip()}


def resolve(url: str | os.PathLike[str]) -> Location:
    """Resolve a local path, ``file://`` or ``s3://`` URL to a :class:`Location`; a protocol
    not in :func:`allowed_protocols` is refused before any file system is made."""
    url = os.fspath(url)
    protocol, _ = fsspec.core.split_protocol(url)
    protocol = protocol or "file"
    allowed = allowed_protocols()
    if _ALIASES.get(protocol, protocol) not in allowed:
        raise StorageError(
            f"{url}: the {protocol!r} protocol is not allowed (allowed: "
            f"{', '.join(sorted(allowed))}). Use a local path, file:// or s3://, or add the "
            f"protocol to {PROTOCOLS_ENV} (comma-separated) if you mean it."
        )
    try:
        fs = fsspec.filesystem(protocol, **storage_options(protocol))
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
