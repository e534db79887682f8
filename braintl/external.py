"""External validation: the published model scored on labelled scans from other sources.

A model that learned its source (scanner, site, file format) rather than the tumor scores well on
its own held-out test set and poorly elsewhere; only data from elsewhere shows it (CLAIM and
TRIPOD+AI ask for it). Two steps, apart in time:

- :func:`screen`, before any training: each external folder (the layout of the development data:
  one folder per label) is listed, so a bad URL fails at once, then decoded and hashed together
  with the development data in one :func:`braintl.data.manifest.scan` (the exact, near and
  transformed-copy search that groups the development set). An external image whose group holds a
  development image is a copy of a scan the model may have trained on: removed and counted, so
  the external figure is not flattered by it.
- :func:`validate`, after publishing: the published model scores the remaining images and the
  run's own held-out test images the same way (:func:`braintl.predict.probabilities`, as
  ``braintl predict`` would), at the threshold chosen on validation. Nothing is tuned on an
  external set. Intervals are group bootstraps: copies inside an external set count once.
"""

from __future__ import annotations

import posixpath
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from braintl.challenge import held_out
from braintl.data.decode import DecodeLimits
from braintl.data.listing import Listing, label_index, list_images
from braintl.data.manifest import LABEL_CONFLICT, OK, QUARANTINED, Record, scan
from braintl.data.prepare import DataConfig
from braintl.errors import UserError
from braintl.metrics import evaluate, json_safe, reliability_bins, roc_curve
from braintl.predict import probabilities
from braintl.publish import load_model
from braintl.results import EXTERNAL_FILE
from braintl.storage import resolve
from braintl.uncertainty import BOOTSTRAP_RESAMPLES, bootstrap_metrics

BOOTSTRAP_SEED = 0
INTERNAL = "internal test"
METHOD = (
    "the published model at its validation threshold (nothing tuned on external data), images "
    "read from their files as `braintl predict` reads them; copies of development scans removed "
    "first by the duplicate search that groups the development set; 95% group-bootstrap "
    "intervals (copies inside a set count once)"
)
# Scores kept per set: report and card name sensitivity what the bootstrap calls recall.
SCORES = {"auc": "auc", "sensitivity": "recall", "specificity": "specificity"}


def screen(data_url: str, external_urls: Sequence[str], config: DataConfig) -> list[dict]:
    """Per external URL: its usable images (URL, label, source group) once the copies of
    development scans are removed, and what was removed or unusable.

    Raises :class:`UserError` naming the URL and the fix when a folder cannot be listed, is
    empty, or keeps fewer than two labels."""
    externals = [_listing(url, config.label_map) for url in external_urls]
    development = list_images(data_url, config.label_map)
    sets = [development, *externals]
    # Each set's files under its own prefix: two sets may hold equal relative paths, and a
    # volume's file becomes several records (its slices).
    tagged = tuple(
        replace(ref, relpath=f"{k}/{ref.relpath}")
        for k, listing in enumerate(sets)
        for ref in listing.images
    )
    manifest = scan(
        Listing(development.root, tagged, ()),
        DecodeLimits(config.min_side, config.max_pixels),
        config.near_distance,
        config.copy_distance,
        clinical=config.clinical,
    )
    records: list[list[Record]] = [[] for _ in sets]
    for record in manifest.records:
        k, record.relpath = record.relpath.split("/", 1)
        records[int(k)].append(record)
    dev_members: dict[int, list[str]] = defaultdict(list)
    for record in records[0]:
        if record.group >= 0:
            dev_members[record.group].append(record.relpath)
    screened = []
    names = _names([e.root for e in externals])
    for listing, name, mine in zip(externals, names, records[1:], strict=True):
        screened.append(_screened(name, listing, mine, dev_members))
        _check_usable(screened[-1])
    return screened


def _screened(name: str, listing: Listing, mine: list[Record], dev: dict[int, list[str]]) -> dict:
    """One external set's record: ``mine`` are its scanned records, ``dev`` maps the groups
    holding development scans to those scans."""
    copies = [rec for rec in mine if rec.group in dev]
    kept = [rec for rec in mine if rec.status == OK and rec.group not in dev]
    root = resolve(listing.root)
    return {
        "name": name,
        "url": listing.root,
        "listed": len(listing.images),
        "skipped": len(listing.skipped),
        "copies_removed": len(copies),
        "copies": [{"file": rec.relpath, "of": dev[rec.group][:3]} for rec in copies],
        "quarantined": [
            {"file": rec.relpath, "reason": rec.reason} for rec in mine if rec.status == QUARANTINED
        ],
        "label_conflicts": sum(
            rec.status == LABEL_CONFLICT and rec.group not in dev for rec in mine
        ),
        "per_label": dict(sorted(Counter(rec.label for rec in kept).items())),
        "members": [
            {"url": root.join(rec.relpath).url, "y": label_index(rec.label), "group": rec.group}
            for rec in kept
        ],
    }


def _listing(url: str, label_map: dict[str, str]) -> Listing:
    try:
        return list_images(url, label_map)
    except UserError as exc:
        raise UserError(
            f"--external {url}: {exc} An external set is laid out like --data (one folder per "
            "label, e.g. yes/ and no/): fix the folder, or leave this --external out."
        ) from None


def _names(roots: list[str]) -> list[str]:
    """Short names for the report: each folder's last component, numbered when repeated."""
    bases = [posixpath.basename(root.rstrip("/")) or root for root in roots]
    seen = Counter(bases)
    return [f"{b} ({i + 1})" if seen[b] > 1 else b for i, b in enumerate(bases)]


def _check_usable(source: dict) -> None:
    labels = {m["y"] for m in source["members"]}
    if len(labels) < 2:
        raise UserError(
            f"--external {source['url']}: after removing {source['copies_removed']} copies of "
            f"development scans, {len(source['quarantined'])} unusable files and "
            f"{source['label_conflicts']} with conflicting labels, {len(source['members'])} "
            f"scans remain ({source['per_label'] or 'none'}): AUC, sensitivity and specificity "
            "need scans of both labels that the model has not seen. Add such scans, or leave "
            "this --external out."
        )


def validate(model_url: str, tensors_url: str, screened: list[dict]) -> dict:
    """The published model at ``model_url`` on its run's held-out test set (the tensor set at
    ``tensors_url``, images with a file) and on every screened external set."""
    internal = held_out(tensors_url)
    mine = {"name": INTERNAL, "url": None, "without_file": internal.without_file}
    sets = [(mine, internal.urls, internal.y, internal.groups)]
    for s in screened:
        members = s["members"]
        info = {k: v for k, v in s.items() if k != "members"}
        y, groups = (np.array([m[k] for m in members], dtype=np.int64) for k in ("y", "group"))
        sets.append((info, [m["url"] for m in members], y, groups))
    published = load_model(model_url)
    every = [url for _, urls, _, _ in sets for url in urls]
    prob = dict(zip(every, probabilities(published, every), strict=True))
    scored_sets = [
        info | score(y, np.array([prob[url] for url in urls]), groups, published.threshold)
        for info, urls, y, groups in sets
    ]
    return json_safe(
        {
            "model": model_url,
            "threshold": published.threshold,
            "method": METHOD,
            "internal": scored_sets[0],
            "sources": scored_sets[1:],
        }
    )


def score(y: np.ndarray, p: np.ndarray, groups: np.ndarray, threshold: float) -> dict:
    """AUC, sensitivity and specificity at ``threshold`` with group-bootstrap intervals, and
    the ROC curve and reliability bins beside them."""
    unique = len(np.unique(groups))
    if len(y) == 0 or unique < 2:
        return {"n": int(len(y)), "groups": unique, "scores": None}
    boot = bootstrap_metrics(y, p, [threshold], groups, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
    whole = evaluate(y, p, threshold)
    both = 0 < y.sum() < len(y)
    fpr, tpr, _ = roc_curve(y, p) if both else ([], [], [])
    return {
        "n": int(len(y)),
        "tumor": int(y.sum()),
        "groups": unique,
        "bootstrap": f"group bootstrap, {unique} groups, {len(y)} images",
        "scores": {name: boot[key] for name, key in SCORES.items()},
        "accuracy": boot["accuracy"]["estimate"],
        "brier": whole.brier,
        "ece": whole.ece,
        "roc": {"fpr": list(map(float, fpr)), "tpr": list(map(float, tpr))},
        "reliability": reliability_bins(y, p),
    }


def summary(validation: dict) -> dict:
    """The few figures ``latest.json``, ``results.json`` and the model card carry."""

    def brief(s: dict) -> dict:
        scores = s.get("scores") or {}
        figures = {
            name: {k: v.get(k) for k in ("estimate", "low", "high")} for name, v in scores.items()
        }
        counts = {k: s.get(k) for k in ("name", "url", "n", "groups", "copies_removed")}
        return counts | figures

    return {
        "threshold": validation["threshold"],
        "internal": brief(validation["internal"]),
        "sources": [brief(s) for s in validation["sources"]],
    }


def write(run_url: str, validation: dict) -> dict:
    """``external.json`` under the run, and its summary added to ``results.json``; returns the
    summary."""
    run = resolve(run_url)
    run.join(EXTERNAL_FILE).write_json(validation)
    brief = summary(validation)
    results = run.join("results.json")
    results.write_json(results.read_json() | {"external": brief})
    return brief
