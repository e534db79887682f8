"""Table 1, ours beside the seed's: one row per (backbone, strategy), as records, CSV and
Markdown. The HTML page renders the same records, so every format shows the same figures."""

from __future__ import annotations

import csv
import io

from braintl.markdown import markdown_escape
from braintl.report.estimands import ensemble_estimand

# Column → the score it reads (sensitivity is recall; the seed reports it as recall).
TABLE_METRICS = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "f1": "f1",
    "auc": "auc",
    "sensitivity": "recall",
    "specificity": "specificity",
}


def table_rows(models: list[dict]) -> list[dict]:
    """Per model and column: the test estimate of its fold ensemble (the published model) with
    its group-bootstrap interval, validation and test mean ± sd over folds (the spread), the
    image bootstrap's interval, the figure on one image per group with its interval, and the
    seed's figure (None where the seed has none or where ``braintl.caveats`` keeps it out),
    with the label that says how it compares."""
    rows = []
    for model in models:
        seed = (model["seed"] or {}).get("figures", {})
        cells = {}
        for column, score in TABLE_METRICS.items():
            boot = model["test_bootstrap"][score]
            images = model["test_bootstrap_images"][score]
            one = model["test_one_per_group"][score]
            cells[column] = {
                "val_mean": model["folds"]["val"][score]["mean"],
                "val_sd": model["folds"]["val"][score]["sd"],
                "test_mean": model["folds"]["test"][score]["mean"],
                "test_sd": model["folds"]["test"][score]["sd"],
                "test_estimate": boot["estimate"],
                "test_low": boot["low"],
                "test_high": boot["high"],
                "test_image_low": images["low"],
                "test_image_high": images["high"],
                "one_per_group_estimate": one["estimate"],
                "one_per_group_low": one["low"],
                "one_per_group_high": one["high"],
                "seed": seed.get(column),
            }
        folds = len(model["folds"]["test"]["auc"]["values"])
        rows.append(
            {
                "model": model["model"],
                "best": model["best"],
                "weights": model["weights"],
                "folds": folds,
                "estimand": ensemble_estimand(folds),
                "seed_name": (model["seed"] or {}).get("name"),
                "seed_shown": model["seed_comparison"]["shown"],
                "seed_label": model["seed_comparison"]["label"],
                "cells": cells,
            }
        )
    return rows


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}"


def mean_sd(mean: float | None, sd: float | None) -> str:
    return percent(mean) + ("" if sd is None or mean is None else f" ± {sd * 100:.1f}")


def interval_of(boot: dict) -> str:
    """A bootstrap result (estimate, low, high) as the table shows it."""
    return interval(
        {"test_estimate": boot["estimate"], "test_low": boot["low"], "test_high": boot["high"]}
    )


def interval(cell: dict) -> str:
    if cell["test_estimate"] is None:
        return "–"
    low, high = percent(cell["test_low"]), percent(cell["test_high"])
    return f"{percent(cell['test_estimate'])} [{low}–{high}]"


def to_csv(rows: list[dict]) -> str:
    """Fractions in [0, 1]; empty where undefined."""
    fields = list(next(iter(rows[0]["cells"].values())).keys()) if rows else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["model", "best", "weights", "folds", "estimand", "seed_model", "seed_comparison"]
        + [f"{c}_{f}" for c in TABLE_METRICS for f in fields]
    )
    for row in rows:
        values = [row["cells"][c][f] for c in TABLE_METRICS for f in fields]
        writer.writerow(
            [
                *(row[k] for k in ("model", "best", "weights", "folds", "estimand", "seed_name")),
                row["seed_label"],
                *values,
            ]
        )
    return buffer.getvalue()


def to_markdown(rows: list[dict], protocol: str, warnings: list[str]) -> str:
    """The run's warnings first; then test estimate [95% CI] per column, then the seed's figure,
    in percent."""
    header = ["model", "weights", "seed's figure"] + [f"{c} (seed)" for c in TABLE_METRICS]
    opening = "".join(f"**Warning: {w}**\n\n" for w in warnings)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        name = f"**{row['model']}** (best)" if row["best"] else row["model"]
        cells = [
            f"{interval(row['cells'][c])} ({percent(row['cells'][c]['seed'])})"
            for c in TABLE_METRICS
        ]
        lead = f"| {name} | {markdown_escape(row['weights'])} | "
        lead += f"{markdown_escape(row['seed_label'])} | "
        lines.append(lead + " | ".join(cells) + " |")
    estimand = rows[0]["estimand"] if rows else "the fold ensemble"
    note = (
        f"\nOurs: held-out test set, protocol `{protocol}`, {estimand}, with a 95% "
        "group-bootstrap interval (source groups resampled: copies of a scan are one case), in "
        "%. Seed (in parentheses, where shown): its Table 1, protocol `paper` (leaky), one model "
        "on one random split.\n"
    )
    return opening + "\n".join(lines) + "\n" + note
