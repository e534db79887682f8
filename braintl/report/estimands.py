"""The test estimands, worded once: every figure names the one it shows.

The headline of a model is the score of the model a run publishes, the fold ensemble (see
:mod:`braintl.ensemble`): Table 1, the summary, DeLong's test, ROC, calibration and the model
card. The fold models' mean ± sd stays beside it as the spread (how much the result depends on
the fold), and the leakage audit compares protocols on it.
"""

from __future__ import annotations


def ensemble_estimand(k: int) -> str:
    """The published model: the k fold models' mean probability at the out-of-fold threshold."""
    if k == 1:
        return "one model (single fold, not cross-validated), at its validation threshold"
    return (
        f"fold ensemble of {k} models (mean probability; the published model), at its "
        "out-of-fold validation threshold"
    )


def fold_mean_estimand(k: int) -> str:
    """The spread: each fold model scored at its own threshold, the k scores averaged."""
    return f"mean of {k} fold models, each at its own threshold"
