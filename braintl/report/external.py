"""The report's External validation section: the published model on each external set beside
its own held-out test set (``external.json``, written by :func:`braintl.external.write`)."""

from __future__ import annotations

import json
from html import escape

from braintl.report import plots
from braintl.report.tables import interval_of
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


def section(validation: dict | None, images: dict[str, str]) -> str:
    """The section's HTML; without external sets, a line that says so."""
    if validation is None:
        return (
            '<p class="note" id="external-none">No external set was given (<code>--external '
            "URL</code>): every figure in this report comes from the development source, and a "
            "model that learned that source rather than the tumor would not show it here.</p>"
        )
    headers = ["set", "scans (tumor)", "groups", "copies removed", "unusable"]
    headers += [f"{name} [95% CI]" for name in SCORE_NAMES.values()] + ["Brier", "ECE"]
    rows = []
    for s in [validation["internal"], *validation["sources"]]:
        scores = s.get("scores") or {}
        unusable = len(s.get("quarantined", [])) + s.get("label_conflicts", 0)
        name = escape(s["name"]) + (
            f"<div class=folds>{escape(s['url'])}</div>" if s["url"] else ""
        )
        cells = [
            f"<td>{name}</td>",
            _num(f"{s['n']} ({s.get('tumor', '–')})"),
            _num(s["groups"]),
            _num(s.get("copies_removed", "–")),
            _num(unusable),
        ]
        for key in SCORE_NAMES:
            figure = scores.get(key) or {"estimate": None, "low": None, "high": None}
            cells.append(
                f'<td class="num" data-set="{escape(s["name"])}" data-metric="{key}" '
                f'data-value="{json.dumps(figure["estimate"])}">{interval_of(figure)}</td>'
            )
        cells += [_num(_short(s.get("brier"))), _num(_short(s.get("ece")))]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in headers)
    table = f'<table id="external-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
    plots_html = "".join(
        f'<figure><img id="plot-{k}" alt="{k}" src="{v}"></figure>' for k, v in images.items()
    )
    copies = "".join(
        f"<li>{escape(s['name'])}: {escape(c['file'])} = {escape(', '.join(c['of']))}</li>"
        for s in validation["sources"]
        for c in s.get("copies", [])[:SHOWN_COPIES]
    )
    named = f"Copies removed (up to {SHOWN_COPIES} per set named; external.json lists all)"
    return (
        table
        + "</tbody></table>"
        + f'<p class="note">Scores in %, threshold {validation["threshold"]:.4f}: '
        f"{escape(validation['method'])}. Copies removed: external images whose source group "
        "(exact, near or transformed copy) holds a development scan. The internal test row is "
        "the published model itself on this run's held-out test scans, the same estimand as "
        "the external rows; Table 1's estimate may differ from it.</p>"
        + plots_html
        + (f"<details><summary>{named}</summary><ul>{copies}</ul></details>" if copies else "")
    )


def _num(value: object) -> str:
    return f"<td class=num>{escape(str(value))}</td>"


def _short(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
