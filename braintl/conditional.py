"""Conditional writes: an object is created only if absent, replaced only if unchanged since read.

Leases and the ``latest.json`` pointer are read-compare-write documents that two runs may
write at once; with plain writes the slower run silently undoes the faster one. Here the
storage decides who came first:

- S3: PutObject with ``If-None-Match: *`` (create) or ``If-Match: <ETag>`` (replace); the
  version is the ETag. A server that ignores these headers makes every write unconditional:
  :func:`unsupported` finds out once per bucket and says so.
- Local paths: a create links a finished temporary file into place (``os.link`` fails when the
  name exists, as ``O_EXCL`` does, and no reader sees a half-written file); a replace or delete
  compares and renames under an exclusive ``flock`` of a sidecar ``.<name>.lock`` file. The
  version is a hash of the content. Like any flock, it holds on local disks and NFSv4, not on
  file systems without locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import posixpath
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from braintl.storage import Location, StorageError, guarded, local_replace, local_temporary

# What S3 answers a write whose condition failed: 412, or 409 while another conditional write
# of the same key is in flight (AWS).
PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412"}


class ConditionFailed(Exception):
    """The object is not as the writer expected: another writer came first."""


@dataclass(frozen=True)
class Versioned:
    """An object's bytes and the version a conditional write must name to replace them."""

    data: bytes
    version: str


def read(location: Location) -> Versioned | None:
    """The object and its version, read together; None when it does not exist."""
    try:
        return guarded(location.url, _s3_read if _is_s3(location) else _local_read, location)
    except FileNotFoundError:
        return None


def write(location: Location, data: bytes, expect: str | None) -> str:
    """Create the object (``expect`` None: only if absent) or replace it (only if its version is
    still ``expect``); returns the new version. Raises :class:`ConditionFailed` otherwise.

    A request retried after its response was lost finds its own bytes in place: that counts as
    success, not as another writer's."""
    try:
        if _is_s3(location):
            return guarded(location.url, _s3_write, location, data, expect)
        if expect is None:
            return guarded(location.url, _local_create, location, data)
        return guarded(location.url, _local_replace, location, data, expect)
    except ConditionFailed:
        current = read(location)
        if current is not None and current.data == data:
            return current.version
        raise


def delete(location: Location, expect: str) -> None:
    """Remove the object only if its version is still ``expect`` (gone already: done)."""
    if _is_s3(location):
        guarded(location.url, _s3_delete, location, expect)
    else:
        guarded(location.url, _local_delete, location, expect)


def update(location: Location, data: bytes, replaces: Callable[[bytes | None], bool]) -> bool:
    """Write ``data`` unless ``replaces(current bytes or None)`` says the object must stay;
    read, compare and write again whenever another writer came in between. Returns whether
    ``data`` was written."""
    while True:
        current = read(location)
        if not replaces(None if current is None else current.data):
            return False
        try:
            write(location, data, None if current is None else current.version)
            return True
        except ConditionFailed:
            continue


def append(location: Location, data: bytes) -> None:
    """Add ``data`` at the end (S3 has no append): read, write old bytes and ``data`` only if
    nothing changed since the read, again whenever another writer came in between."""
    while True:
        current = read(location)
        try:
            before, version = (b"", None) if current is None else (current.data, current.version)
            write(location, before + data, version)
            return
        except ConditionFailed:
            continue


def unsupported(location: Location) -> str | None:
    """Why conditional writes at ``location`` cannot be trusted, or None when they can.

    Local paths: None. S3: probes the bucket once per process (creates an object twice, then
    replaces it naming a wrong version; both must fail) and names the server's limitation."""
    if not _is_s3(location):
        return None
    bucket = location.fs.split_path(location.path)[0]
    return _probe(location.fs, location.fs.endpoint_url or "AWS", bucket)


@functools.cache
def _probe(fs, endpoint: str, bucket: str) -> str | None:
    path = f"{bucket}/.braintl-probe-{uuid.uuid4().hex}"
    probe = Location(fs, path, fs.unstrip_protocol(path))
    server = f"the S3 server at {endpoint} (bucket {bucket})"
    try:
        write(probe, b"first", None)
        try:
            write(probe, b"second", None)
            return f"{server} ignores If-None-Match: a create over an existing object succeeded"
        except ConditionFailed:
            pass
        try:
            write(probe, b"third", '"0123456789abcdef0123456789abcdef"')
            return f"{server} ignores If-Match: a write naming a wrong ETag succeeded"
        except ConditionFailed:
            return None
    except StorageError as exc:
        if not _answered(exc):
            raise  # unreachable, not unsupported: the caller's retries find out later
        return f"{server} refuses conditional writes ({exc})"
    finally:
        with contextlib.suppress(Exception):
            fs.rm(probe.path)


def _answered(exc: BaseException | None) -> bool:
    """True when some cause of ``exc`` is an HTTP answer from the server (botocore's error)."""
    while exc is not None:
        if getattr(exc, "response", None):
            return True
        exc = exc.__cause__
    return False


def _is_s3(location: Location) -> bool:
    if location.protocol in ("s3", "s3a"):
        return True
    if location.protocol == "file":
        return False
    raise StorageError(
        f"{location.url}: leases and the latest pointer need conditional writes, which braintl "
        "implements for local paths and s3:// only. Use one of those for the output."
    )


# S3: through s3fs's client (endpoint and credentials as for every other call).


def _s3_read(location: Location) -> Versioned:
    from fsspec.asyn import sync

    bucket, key, _ = location.fs.split_path(location.path)

    async def get() -> Versioned:
        response = await location.fs._call_s3("get_object", Bucket=bucket, Key=key)
        async with response["Body"] as body:
            return Versioned(await body.read(), response["ETag"])

    return sync(location.fs.loop, get)


def _s3_write(location: Location, data: bytes, expect: str | None) -> str:
    bucket, key, _ = location.fs.split_path(location.path)
    condition = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": expect}
    try:
        response = location.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
    except FileNotFoundError as exc:  # If-Match on an object that is gone, or no bucket
        if expect is None:
            raise
        raise ConditionFailed(location.url) from exc
    except OSError as exc:
        _raise_if_precondition(location, exc)
        raise
    finally:
        location.fs.invalidate_cache(location.path)
    return response["ETag"]


def _s3_delete(location: Location, expect: str) -> None:
    bucket, key, _ = location.fs.split_path(location.path)
    try:
        location.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=expect)
    except FileNotFoundError:
        return
    except OSError as exc:
        _raise_if_precondition(location, exc)
        raise
    finally:
        location.fs.invalidate_cache(location.path)


def _raise_if_precondition(location: Location, exc: OSError) -> None:
    """s3fs turns HTTP 412 (and AWS's 409 for racing conditional writes) into an OSError whose
    cause is botocore's error."""
    response = getattr(exc.__cause__, "response", None) or {}
    error = response.get("Error", {})
    status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    if {str(error.get("Code")), status} & PRECONDITION_CODES:
        raise ConditionFailed(location.url) from exc


# Local paths.


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _local_read(location: Location) -> Versioned:
    with open(location.path, "rb") as fh:
        data = fh.read()
    return Versioned(data, _digest(data))


def _local_create(location: Location, data: bytes) -> str:
    tmp = local_temporary(location.path, data)
    try:
        os.link(tmp, location.path)
    except FileExistsError as exc:
        raise ConditionFailed(location.url) from exc
    finally:
        os.unlink(tmp)
    return _digest(data)


@contextlib.contextmanager
def _locked(location: Location) -> Iterator[None]:
    folder, name = posixpath.split(location.path)
    fd = os.open(posixpath.join(folder, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _local_replace(location: Location, data: bytes, expect: str) -> str:
    os.makedirs(posixpath.dirname(location.path), exist_ok=True)
    with _locked(location):
        current = read(location)
        if current is None or current.version != expect:
            raise ConditionFailed(location.url)
        local_replace(location.path, data)
    return _digest(data)


def _local_delete(location: Location, expect: str) -> None:
    with _locked(location):
        current = read(location)
        if current is None:
            return
        if current.version != expect:
            raise ConditionFailed(location.url)
        os.unlink(location.path)
