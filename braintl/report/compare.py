"""The report's statistics per model and between models, from the fold models' test predictions.

How a model with k fold models is scored on the held-out test set (the page says so too):

- **Table figures**: each fold model at its own Youden threshold (chosen on its validation fold),
  the k scores averaged. The 95% interval is a group bootstrap: it resamples source groups (a
  scan and its copies) jointly for all k fold models, so copies do not pass for independent
  cases. The image bootstrap's interval stays beside it, to show what treating copies as cases
  would claim, and so do the same figures on one image per group.
- **One image per group**: each group's first image in the TensorSet, where originals precede
  augmented copies, so an original scan whenever the test set holds one. A representative rather
  than the group's mean probability: averaging copies would score a test-time-augmentation
  ensemble that the published model never runs.
- **ROC curves, DeLong's test, calibration**: the fold-averaged tumor probability per image (the
  k fold models as one ensemble), which needs no threshold. DeLong's test counts a group once
  (Obuchowski's clustered form) and its p-values are Holm-adjusted over the comparisons.
- **Confusion matrix**: the k fold models' counts at their own thresholds, summed (k × N calls).
"""

from __future__ import annotations

import numpy as np

from braintl.data.tensors import TensorSet
from braintl.metrics import evaluate, json_safe, reliability_bins, roc_curve
from braintl.report.collect import FoldPredictions, Run, fold_predictions
from braintl.report.estimands import ensemble_estimand, fold_mean_estimand
from braintl.uncertainty import bootstrap_metrics, delong_test, holm, one_per_group

ESTIMATE_NOTE = (
    "Test figures: each of a model's k fold models is scored at its own threshold (Youden's J on "
    "its validation fold) and the k scores are averaged. 95% intervals: {bootstrap} "
    "({resamples} resamples, seed {seed}), drawing source groups (a scan with its copies) with "
    "replacement, jointly for all k fold models; resamples where a score is undefined (one class "
    "drawn) are left out and counted in report.json. Below each: the image bootstrap's interval, "
    "which takes every image for an independent case, and the figures on one image per group "
    "(its first in the tensor set, an original scan where the test set holds one). ROC curves, "
    "DeLong's test and calibration use the fold-averaged probability per image; DeLong's test "
    "counts each group once and its p-values are Holm-adjusted; confusion matrices sum the k "
    "fold models' calls."
)
DELONG_METHOD = (
    "DeLong's test for clustered data (Obuchowski 1997) on the fold-averaged probabilities: each "
    "source group counts once. p_holm: Holm-adjusted over the comparisons with the best model. "
    "p_images: DeLong's test taking every image for an independent case, for comparison."
)
AUDIT_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")


def model_statistics(pred: FoldPredictions, resamples: int, seed: int) -> dict:
    """Group- and image-bootstrap intervals, figures on one image per group, per-class
    accuracy, confusion matrix, ROC and calibration."""
    boot = bootstrap_metrics(pred.y, pred.probs, pred.thresholds, pred.groups, resamples, seed)
    images = bootstrap_metrics(pred.y, pred.probs, pred.thresholds, None, resamples, seed)
    first = first_image_per_group(pred)
    one_per = bootstrap_metrics(
        pred.y[first], pred.probs[:, first], pred.thresholds, None, resamples, seed
    )
    calls = [evaluate(pred.y, p, t) for p, t in zip(pred.probs, pred.thresholds, strict=True)]
    matrix = np.sum([c.confusion_matrix for c in calls], axis=0).tolist()
    ensemble = evaluate(pred.y, pred.mean_prob)
    fpr, tpr, _ = (
        roc_curve(pred.y, pred.mean_prob) if 0 < pred.y.sum() < len(pred.y) else ([], [], [])
    )
    return json_safe(
        {
            "bootstrap": bootstrap_unit(pred, resamples, seed),
            "test_bootstrap": boot,
            "test_bootstrap_images": images,
            "test_one_per_group": one_per,
            "per_class_accuracy": {"tumor": boot["recall"], "no_tumor": boot["specificity"]},
            "confusion_matrix": matrix,
            "n_test": len(pred.y),
            "n_groups": len(first),
            "ensemble": {
                "estimand": ensemble_estimand(len(pred.probs)),
                "auc": ensemble.auc,
                "brier": ensemble.brier,
                "ece": ensemble.ece,
                "roc": {"fpr": list(map(float, fpr)), "tpr": list(map(float, tpr))},
                "reliability": reliability_bins(pred.y, pred.mean_prob),
            },
        }
    )


def bootstrap_unit(pred: FoldPredictions, resamples: int, seed: int) -> dict:
    """What the intervals resample, in numbers and in the words the page uses."""
    groups, images = len(np.unique(pred.groups)), len(pred.y)
    return {
        "method": "group bootstrap",
        "groups": groups,
        "images": images,
        "resamples": resamples,
        "seed": seed,
        "text": f"group bootstrap, {groups} groups, {images} images",
    }


def first_image_per_group(pred: FoldPredictions) -> np.ndarray:
    """Positions of each group's image with the smallest TensorSet index."""
    order = np.argsort(pred.index, kind="stable")
    return np.sort(order[one_per_group(pred.groups[order])])


def delong_against_best(preds: dict[str, FoldPredictions], best: str) -> list[dict]:
    """DeLong's test of the best model's ensemble AUC against every other model's, counting each
    source group once, with Holm-adjusted p-values over these comparisons; the image-level p
    (every image its own group) beside it."""
    rows = []
    ours = preds[best]
    for name, pred in preds.items():
        if name == best:
            continue
        if not np.array_equal(pred.index, ours.index):
            raise ValueError(f"{best} and {name} were tested on different images: no paired test")
        try:
            test = delong_test(pred.y, ours.mean_prob, pred.mean_prob, pred.groups)
            images = delong_test(pred.y, ours.mean_prob, pred.mean_prob)
            test |= {"images": len(pred.y), "p_images": images["p"]}
        except ValueError as exc:  # too few groups of a class to test
            test = {"error": str(exc)}
        rows.append({"best": best, "other": name, **test})
    for row, adjusted in zip(rows, holm([r.get("p") for r in rows]), strict=True):
        row["p_holm"] = adjusted
    return [json_safe(row) for row in rows]


def leakage_audit(run: Run, siblings: list[Run]) -> dict:
    """The same models' test scores under each protocol, and the leaky protocol's inflation
    (paper − groups); empty ``rows`` until both protocols have run.

    The paper protocol's test set holds augmented copies and the augmented class mix; the groups
    protocol's holds original scans only. So each row also scores the paper-protocol fold models
    on the original scans of their test set (``paper_originals``, ``inflation_originals``): the
    same kind of images and class mix as the groups test set, copies of them still in training,
    so what remains is leakage, not prevalence or augmentation.
    """
    by_protocol = {r.params["protocol"]: r for r in [run, *siblings]}
    audit = {
        "runs": {p: {"run_id": r.run_id, "url": r.loc.url} for p, r in by_protocol.items()},
        "rows": [],
    }
    if not {"groups", "paper"} <= by_protocol.keys():
        return audit
    tensors = {p: TensorSet.load(r.tensors_url) for p, r in by_protocol.items()}
    paper_tensors = tensors["paper"]
    paper_preds = fold_predictions(
        by_protocol["paper"].results, paper_tensors.labels, paper_tensors.groups
    )
    tables = {p: {m["model"]: m for m in r.results["models"]} for p, r in by_protocol.items()}
    for name, groups in tables["groups"].items():
        paper = tables["paper"].get(name)
        if paper is None:
            continue
        originals = originals_scores(paper_preds[name], paper_tensors.augmented)
        row = {
            "model": name,
            "estimand": fold_mean_estimand(len(paper["runs"])),
            "groups": {},
            "paper": {},
            "paper_originals": originals,
            "inflation": {},
            "inflation_originals": {},
        }
        for metric in AUDIT_METRICS:
            g, p = groups["test"][metric]["mean"], paper["test"][metric]["mean"]
            row["groups"][metric], row["paper"][metric] = g, p
            row["inflation"][metric] = _difference(p, g)
            row["inflation_originals"][metric] = _difference(originals[metric], g)
        audit["rows"].append(row)
    audit["test_sets"] = {p: held_out_composition(t) for p, t in tensors.items()}
    return json_safe(audit)


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def originals_scores(pred: FoldPredictions, augmented: np.ndarray) -> dict[str, float | None]:
    """Each fold model's scores on the test images that are no augmented copy, at its own
    threshold, averaged over the fold models where defined (results.json's test mean's rule)."""
    keep = ~augmented[pred.index]
    scores = [
        evaluate(pred.y[keep], p[keep], t) for p, t in zip(pred.probs, pred.thresholds, strict=True)
    ]
    out = {}
    for metric in AUDIT_METRICS:
        values = [v for s in scores if np.isfinite(v := getattr(s, metric))]
        out[metric] = float(np.mean(values)) if values else None
    return out


def held_out_composition(tensors: TensorSet) -> dict:
    """The held-out test set's size, originals and tumor share (all images, originals only)."""
    test = tensors.split.test
    originals = test[~tensors.augmented[test]]
    return {
        "images": len(test),
        "originals": len(originals),
        "tumor_share": float(tensors.labels[test].mean()) if len(test) else None,
        "tumor_share_originals": float(tensors.labels[originals].mean())
        if len(originals)
        else None,
    }
