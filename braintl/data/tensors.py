"""The tensor cache: prepared images as uint8 N×3×H×W with labels, groups and the split.

Training reads only this, so JPEG decoding, cropping, resizing and offline augmentation
happen once per (data fingerprint, preprocessing, augmentation, split), not once per run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from braintl.storage import Location, resolve

ARRAYS = ("images", "labels", "groups", "augmented")


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
    ``groups`` int64 [N] source group of each image; ``augmented`` bool [N].
    """

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    augmented: np.ndarray
    split: Split
    meta: dict

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
        loc = resolve(url) if isinstance(url, str) else url
        if not loc.is_complete():
            raise FileNotFoundError(
                f"{loc.url}: no complete tensor cache here. Build it with "
                "`braintl data prepare DATA_URL --out OUT_URL`."
            )
        arrays = {name: loc.join(f"{name}.npy").read_array() for name in ARRAYS}
        split = Split.from_json(loc.join("split.json").read_json())
        meta = json.loads(loc.join("meta.json").read_bytes())
        return cls(split=split, meta=meta, **arrays)
