"""The two test estimands a report shows for one model, named where each figure appears: they
differ for the same model (until one estimand replaces both), and a reader must see which is which.
"""

from __future__ import annotations


def fold_mean_estimand(k: int) -> str:
    """Table 1, the summary, the leakage audit: each fold model scored, the scores averaged."""
    return f"mean of {k} fold models, each at its own threshold"


def ensemble_estimand(k: int) -> str:
    """ROC, DeLong's test, calibration: one score of the k fold models' averaged probability."""
    return f"fold-averaged probabilities of {k} fold models"
