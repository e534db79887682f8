"""The code that computes results: braintl's version and a hash of its source files.

Run keys and cached stages include it, so a fixed bug in training, data or metrics code makes
the next run train again instead of ending "Nothing changed" on results of the old code. The
hash covers every ``*.py`` file of the package by its path relative to the package, so a copy
of the same tree anywhere hashes the same; it is computed once per process (a few ms).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from braintl import __version__

PACKAGE = Path(__file__).resolve().parent


@functools.cache
def source_hash(root: Path = PACKAGE) -> str:
    """Hash of every ``*.py`` file under ``root``: relative path, length and bytes, by path."""
    digest = hashlib.sha256()
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*.py"))
    for name, path in files:
        data = path.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def code_version() -> dict[str, str]:
    """What ``run.json`` records and run keys include: ``{"version", "source"}``."""
    return {"version": __version__, "source": source_hash()}


def code_key() -> str:
    """The code version as one string, for cache keys: ``<version>+<source hash>``."""
    return f"{__version__}+{source_hash()}"
