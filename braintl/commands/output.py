"""Plain-text tables and JSON for the CLI: readable by default, machine-readable on request."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

# One output folder for every command (git-ignored); BRAINTL_OUT moves it, --out overrides that.
OUT_ENV, DATA_ENV = "BRAINTL_OUT", "BRAINTL_DATA"


DATA_HELP = "labelled images (default: $BRAINTL_DATA; neither given: synthetic phantoms)"
OUT_HELP = "default: %(default)s (from $BRAINTL_OUT when set)"


def default_out() -> str:
    return os.environ.get(OUT_ENV) or "braintl-runs"


def default_data() -> str | None:
    """Labelled images from BRAINTL_DATA; None: synthetic phantoms."""
    return os.environ.get(DATA_ENV) or None


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
