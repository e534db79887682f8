"""Checks on user-given storage URLs that must hold before anything is read or written.

Credentials never travel inside a URL (``s3://KEY:SECRET@bucket``): such a URL would be
stored with the run's parameters, printed in errors and written to ``config.json``. They come
from the environment (``AWS_ACCESS_KEY_ID``, ...), a Prefect block or a Kubernetes Secret.
"""

from __future__ import annotations

import os
import posixpath
import re

from braintl.errors import UserError
from braintl.storage import resolve

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
