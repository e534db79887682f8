"""Where tests keep what a reader checks by eye: screenshots and measured figures."""

from __future__ import annotations

import os
from pathlib import Path


def artifacts_dir(*parts: str) -> Path:
    """``$BRAINTL_TEST_ARTIFACTS/<parts>``, else ``<repo>/test-artifacts/<parts>`` (gitignored);
    created on first use."""
    root = os.environ.get("BRAINTL_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / (
        "test-artifacts"
    )
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
