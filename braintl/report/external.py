"""The report's External validation section (``templates/sections/external.html``): the
published model on each external set beside its own held-out test set (``external.json``,
written by :func:`braintl.external.write`)."""

from __future__ import annotations

from braintl.report import plots
from braintl.results import EXTERNAL_FILE
from braintl.storage import Location

SHOWN_COPIES = 20  # copies named per set on the page; external.json lists them all
SCORE_NAMES = {"auc": "AUC", "sensitivity": "sensitivity", "specificity": "specificity"}


def load(run: Location) -> dict | None:
    target = run.join(EXTERNAL_FILE)
    return target.read_json() if target.exists() else None


def figures(validation: dict | None) -> dict[str, str]:
    """ROC and calibration of every set, the internal test first (name → data URI)."""
    if validation is None:
        return {}
    sets = [
        {"name": s["name"], "auc": s["scores"]["auc"]["estimate"], **s}
        for s in [validation["internal"], *validation["sources"]]
        if s.get("scores") and s["scores"]["auc"]["estimate"] is not None
    ]
    where = "published model, internal test and external sets"
    return {
        "external-roc": plots.roc_curves(sets, f"ROC, {where}"),
        "external-calibration": plots.calibration(sets, f"Calibration, {where} (10 bins)"),
    }


def named_copies(validation: dict) -> list[tuple[str, dict]]:
    """(set name, copy) for the copies the page names: up to SHOWN_COPIES per set."""
    return [
        (s["name"], c) for s in validation["sources"] for c in s.get("copies", [])[:SHOWN_COPIES]
    ]
