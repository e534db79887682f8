"""The report's statistics per model and between models, from the fold models' test predictions.

How a model with k fold models is scored on the held-out test set (the page says so too):

- **Table figures**: each fold model at its own Youden threshold (chosen on its validation fold),
  the k scores averaged; the 95% interval is a percentile bootstrap that resamples test images
  jointly for all k fold models.
- **ROC curves, DeLong's test, calibration**: the fold-averaged tumor probability per image (the
  k fold models as one ensemble), which needs no threshold.
- **Confusion matrix**: the k fold models' counts at their own thresholds, summed (k × N calls).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from braintl.metrics import evaluate, json_safe, reliability_bins
from braintl.report.collect import FoldPredictions, Run
from braintl.uncertainty import bootstrap_metrics, delong_test

ESTIMATE_NOTE = (
    "Test figures: each of a model's k fold models is scored at its own threshold (Youden's J on "
    "its validation fold) and the k scores are averaged; 95% intervals are percentile bootstraps "
    "({resamples} resamples, seed {seed}) that draw test images jointly for all k fold models. "
    "ROC curves, DeLong's test and calibration use the fold-averaged probability per image; "
    "confusion matrices sum the k fold models' calls."
)
AUDIT_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")


def model_statistics(pred: FoldPredictions, resamples: int, seed: int) -> dict:
    """Bootstrap intervals, per-class accuracy, confusion matrix, ROC and calibration."""
    boot = bootstrap_metrics(pred.y, pred.probs, pred.thresholds, resamples=resamples, seed=seed)
    calls = [evaluate(pred.y, p, t) for p, t in zip(pred.probs, pred.thresholds, strict=True)]
    matrix = np.sum([c.confusion_matrix for c in calls], axis=0).tolist()
    ensemble = evaluate(pred.y, pred.mean_prob)
    fpr, tpr, _ = (
        roc_curve(pred.y, pred.mean_prob) if 0 < pred.y.sum() < len(pred.y) else ([], [], [])
    )
    return json_safe(
        {
            "test_bootstrap": boot,
            "per_class_accuracy": {"tumor": boot["recall"], "no_tumor": boot["specificity"]},
            "confusion_matrix": matrix,
            "n_test": len(pred.y),
            "ensemble": {
                "auc": ensemble.auc,
                "brier": ensemble.brier,
                "ece": ensemble.ece,
                "roc": {"fpr": list(map(float, fpr)), "tpr": list(map(float, tpr))},
                "reliability": reliability_bins(pred.y, pred.mean_prob),
            },
        }
    )


def delong_against_best(preds: dict[str, FoldPredictions], best: str) -> list[dict]:
    """DeLong's test of the best model's ensemble AUC against every other model's."""
    rows = []
    for name, pred in preds.items():
        if name == best:
            continue
        try:
            test = delong_test(pred.y, preds[best].mean_prob, pred.mean_prob)
        except ValueError as exc:  # too few images of a class to test
            test = {"error": str(exc)}
        rows.append(json_safe({"best": best, "other": name, **test}))
    return rows


def leakage_audit(run: Run, siblings: list[Run]) -> dict:
    """The same models' mean test scores under each protocol, and the leaky protocol's
    inflation (paper − groups); empty ``rows`` until both protocols have run."""
    by_protocol = {r.params["protocol"]: r for r in [run, *siblings]}
    audit = {
        "runs": {p: {"run_id": r.run_id, "url": r.loc.url} for p, r in by_protocol.items()},
        "rows": [],
    }
    if not {"groups", "paper"} <= by_protocol.keys():
        return audit
    tables = {p: {m["model"]: m for m in r.results["models"]} for p, r in by_protocol.items()}
    for name, groups in tables["groups"].items():
        paper = tables["paper"].get(name)
        if paper is None:
            continue
        row = {"model": name, "groups": {}, "paper": {}, "inflation": {}}
        for metric in AUDIT_METRICS:
            g, p = groups["test"][metric]["mean"], paper["test"][metric]["mean"]
            row["groups"][metric], row["paper"][metric] = g, p
            row["inflation"][metric] = None if g is None or p is None else p - g
        audit["rows"].append(row)
    return audit
