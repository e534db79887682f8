"""Checks on storage URLs that must hold before anything is read or written.

Credentials never travel inside a URL (``s3://KEY:SECRET@bucket``): such a URL would be
stored with the run's parameters, printed in errors and written to ``config.json``. They come
from the environment (``AWS_ACCESS_KEY_ID``, ...), a Prefect block or a Kubernetes Secret.

URLs read from stored records (``latest.json``, ``champion.json``, ``results.json``, ...) are
followed only inside the output root the record lies in (:func:`within`): whoever can write
the bucket can edit a record, and must not steer braintl, with the operator's credentials, to
another bucket, a local file or an internal server.
"""

from __future__ import annotations

import os
import posixpath
import re

from braintl.errors import UserError
from braintl.storage import StorageError, resolve

# scheme://user[:password]@host... ; a local path holding "@" has no scheme and passes.
_USERINFO = re.compile(r"^(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<userinfo>[^/@]*)@")


def redact(url: str) -> str:
    """``url`` with any user and password replaced by ``***``."""
    return _USERINFO.sub(r"\g<scheme>***@", url)


def credentials_problem(name: str, url: str | None) -> str | None:
    """Why ``url`` may not be used (it embeds credentials), or None."""
    if url is None or not _USERINFO.match(url):
        return None
    return (
        f"{name}={redact(url)} embeds credentials in the URL, which would be stored with the run "
        "and printed in errors. Remove them and set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
        "in the environment (or a Prefect block / Kubernetes Secret) instead"
    )


def _key(url: str) -> tuple[str, str]:
    """(protocol, normalised path) naming the same place whatever the spelling of ``url``."""
    loc = resolve(url)
    if loc.protocol == "file":
        return "file", os.path.realpath(loc.path)
    return loc.protocol, posixpath.normpath("/" + loc.path)


def is_inside(url: str, folder_url: str) -> bool:
    """True when ``url`` is ``folder_url`` or lies below it (``./data/../data/out`` is in
    ``data``, ``file:///x`` equals ``/x``; local links are resolved)."""
    (proto, path), (folder_proto, folder) = _key(url), _key(folder_url)
    return proto == folder_proto and (path == folder or path.startswith(folder.rstrip("/") + "/"))


def inside_problem(name: str, url: str, data_name: str, data_url: str | None) -> str | None:
    """Why output ``url`` may not be used (it lies in the data it reads), or None."""
    if data_url is None or not is_inside(url, data_url):
        return None
    return (
        f"{name}={redact(url)} lies inside {data_name}={redact(data_url)}: the next listing would "
        "read the outputs (caches, plots) as scans. Choose an output location outside the data"
    )


def check_locations(data: tuple[str, str | None], outputs: dict[str, str | None]) -> None:
    """Raise :class:`UserError` naming the option when a URL embeds credentials or an output
    lies in the data; ``data`` and ``outputs`` pair option names with URLs (None: unset)."""
    data_name, data_url = data
    problems = [credentials_problem(data_name, data_url)]
    for name, url in outputs.items():
        if url is not None:
            problems += [credentials_problem(name, url), inside_problem(name, url, *data)]
    found = [p for p in problems if p]
    if found:
        raise UserError("; ".join(found) + ".")


def inside_any(url, roots: list[str]) -> bool:
    """True when ``url`` is a URL inside one of ``roots``; a protocol braintl does not open
    (see :func:`braintl.storage.allowed_protocols`) is inside nothing."""
    try:
        return isinstance(url, str) and any(is_inside(url, root) for root in roots)
    except StorageError:
        return False


def within(url, root_url: str, source: str) -> str:
    """``url``, read from the stored record ``source``, once it lies inside ``root_url``;
    else a :class:`UserError`."""
    if not inside_any(url, [root_url]):
        raise UserError(
            f"{source} names {redact(str(url))}, outside {redact(root_url)}: refused, a stored "
            "record may only point inside the output root it lies in. Someone edited it or "
            "copied it from elsewhere: restore it from a completed run, or rerun to write it"
        )
    return url


def outside_roots(urls: dict[str, str | None], roots: list[str], setting: str) -> list[str]:
    """Why each of ``urls`` (parameter name → URL; None: unset) may not be used: it lies
    outside every one of ``roots``, which the operator set in ``setting``."""
    allowed = ", ".join(redact(root) for root in roots) or "none"
    return [
        f"{name}={redact(url)} lies outside the allowed roots ({allowed}); use a URL under one "
        f"of them, or ask the operator to add a root to {setting}"
        for name, url in urls.items()
        if url is not None and not inside_any(url, roots)
    ]
