"""The tensor cache: prepared images as uint8 N×3×H×W with labels, groups and the split.

Training reads only this, so JPEG decoding, cropping, resizing and offline augmentation
happen once per (data fingerprint, preprocessing, augmentation, split), not once per run.

Loading memory-maps the arrays, so every trial and fold on one machine shares one copy of the
pixels in the page cache. A remote cache (``s3://``) is first downloaded once per node into
a node-local folder (:func:`node_cache_dir`), whichever process gets there first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from braintl.errors import UserError
from braintl.storage import COMPLETE_MARKER, Location, resolve

ARRAYS = ("images", "labels", "groups", "augmented")
FILES = (*(f"{name}.npy" for name in ARRAYS), "split.json", "meta.json", COMPLETE_MARKER)
NODE_CACHE_ENV = "BRAINTL_NODE_CACHE"


@dataclass(frozen=True)
class Split:
    """Indices into a :class:`TensorSet`: a held-out test part and k validation folds.

    The training part of fold k is every non-test index outside fold k (with one fold, the
    folds do not cover the development part; the rest only trains). Validation folds
    hold only original images; augmented copies sit with their source group and are used
    only when that group is in training (see :meth:`fold`).
    """

    protocol: str
    test: np.ndarray
    folds: tuple[np.ndarray, ...]
    leaky: bool

    def fold(
        self, k: int, augmented: np.ndarray, groups: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(train indices, validation indices) for fold ``k``.

        Under the leak-free protocol an augmented copy joins training only if its source group
        is not in the validation fold; under the seed's protocol the folds are taken as they are.
        """
        if not 0 <= k < len(self.folds):
            raise ValueError(f"fold {k} does not exist: choose 0..{len(self.folds) - 1}")
        val = self.folds[k]
        train = np.setdiff1d(np.arange(len(groups)), np.concatenate([self.test, val]))
        if not self.leaky:
            val_groups = np.unique(groups[val])
            train = train[~np.isin(groups[train], val_groups)]
            val = val[~augmented[val]]
        return np.sort(train), np.sort(val)

    def to_json(self) -> dict:
        return {
            "protocol": self.protocol,
            "leaky": self.leaky,
            "test": self.test.tolist(),
            "folds": [f.tolist() for f in self.folds],
        }

    @classmethod
    def from_json(cls, obj: dict) -> Split:
        return cls(
            protocol=obj["protocol"],
            leaky=obj["leaky"],
            test=np.asarray(obj["test"], dtype=np.int64),
            folds=tuple(np.asarray(f, dtype=np.int64) for f in obj["folds"]),
        )


@dataclass(frozen=True)
class TensorSet:
    """Everything training needs, in memory.

    ``images`` uint8 [N,3,H,W]; ``labels`` int64 [N] (1 = tumor, 0 = no tumor);
    ``groups`` int64 [N] source group of each image; ``augmented`` bool [N]. ``url``: where it
    was loaded from (None when built in memory); caches derived from it live below it.
    """

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    augmented: np.ndarray
    split: Split
    meta: dict
    url: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def fold(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.split.fold(k, self.augmented, self.groups)

    def save(self, url: str | Location) -> None:
        """Write every array, then the metadata, then the completion marker (last)."""
        loc = resolve(url) if isinstance(url, str) else url
        for name in ARRAYS:
            loc.join(f"{name}.npy").write_array(np.ascontiguousarray(getattr(self, name)))
        loc.join("split.json").write_json(self.split.to_json())
        loc.join("meta.json").write_json(self.meta)
        loc.mark_complete({"n": len(self), "written_at": time.time()})

    @classmethod
    def load(cls, url: str | Location) -> TensorSet:
        """Memory-map a complete cache; a remote one is downloaded to the node cache first.

        The arrays are copy-on-write maps: writing to one changes this process's view only.
        """
        loc = resolve(url) if isinstance(url, str) else url
        if not loc.is_complete():
            raise FileNotFoundError(
                f"{loc.url}: no complete tensor cache here. Build it with "
                "`braintl data prepare DATA_URL --out OUT_URL`."
            )
        folder = loc.path if loc.protocol == "file" else node_copy(loc)
        arrays = {
            name: np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="c").view(np.ndarray)
            for name in ARRAYS
        }
        local = resolve(folder)
        split = Split.from_json(local.join("split.json").read_json())
        meta = local.join("meta.json").read_json()
        return cls(split=split, meta=meta, url=loc.url, **arrays)


def node_cache_dir() -> str:
    """Where remote tensor caches are copied on this machine: ``$BRAINTL_NODE_CACHE``, or a
    per-user folder in the system's temporary directory. Nothing is evicted automatically."""
    default = os.path.join(tempfile.gettempdir(), f"braintl-{os.getuid()}", "tensors")
    return os.environ.get(NODE_CACHE_ENV) or default


def private_folder(path: str) -> None:
    """Create ``path`` (0700) or check an existing one: a folder that trials trust as pixels
    must be this user's own, else another local user could have planted (or could swap) the
    arrays in a shared ``/tmp``. Refuses links and folders owned by others; tightens the
    permissions of this user's own."""
    with contextlib.suppress(FileExistsError):
        os.makedirs(path, mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        problem = "not a folder (a link or a file)"
    elif info.st_uid != os.getuid():
        problem = f"owned by uid {info.st_uid}, not this user (uid {os.getuid()})"
    else:
        problem = None
    if problem:
        raise UserError(
            f"{path}: the node-local tensor cache folder is {problem}. Remove it, or set "
            f"{NODE_CACHE_ENV} to a folder of your own"
        )
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


def node_copy(loc: Location) -> str:
    """The local folder holding a copy of the complete remote cache ``loc``, downloading it
    unless this node has it already.

    The folder is named by the cache key (the URL's last part) and a hash of URL and completion
    marker, so a cache rewritten at the same URL is fetched again. Concurrent processes take a
    file lock, so one downloads while the others wait; the download goes to a temporary folder
    renamed into place when complete, so a crash never leaves a half-written copy behind.
    """
    marker = loc.join(COMPLETE_MARKER).read_bytes()
    digest = hashlib.sha256(loc.url.encode() + b"\0" + marker).hexdigest()[:16]
    root = node_cache_dir()
    if not os.environ.get(NODE_CACHE_ENV):  # the per-user folder in a shared /tmp
        private_folder(os.path.dirname(root))
    private_folder(root)  # checked before trusting a copy found there
    target = os.path.join(root, f"{os.path.basename(loc.path.rstrip('/'))}-{digest}")
    if os.path.isdir(target):
        return target
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(target):  # another process finished the download while we waited
            return target
        partial = tempfile.mkdtemp(dir=root, prefix=".partial-")
        try:
            for name in FILES:
                loc.join(name).download(os.path.join(partial, name))
            os.rename(partial, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(partial)
    return target
