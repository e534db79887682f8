"""Uncertainty of test-set scores when copies of one scan sit in the test set.

A source group (a scan with its exact, near and augmented copies; see
``braintl.data.duplicates``) is one case, however many images it has: a copy adds pixels, not
evidence. Resampling or counting images one by one therefore makes intervals too narrow and
p-values too small. Every function here takes ``groups``, one id per image, and treats a group
as the unit; ``groups=None`` makes every image its own group, which *is* the ordinary image-level
method (one implementation for both)::

    boot = bootstrap_metrics(y, probs, thresholds, groups)          # cluster bootstrap
    test = delong_test(y, prob_best, prob_other, groups)            # clustered DeLong
    adjusted = holm([row["p"] for row in tests])                    # many models, one family
    first = one_per_group(groups)                                   # one image per source
"""

from __future__ import annotations

import math

import numpy as np

from braintl.metrics import auc_placements, check_predictions, json_safe, weighted_auc

# Scores the report bootstraps: the threshold-dependent ones and the AUC.
BOOTSTRAP_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


def group_members(groups, n: int) -> np.ndarray:
    """Each image's group as 0..G−1, numbered in order of first appearance, so that singleton
    groups are the images' own positions whatever their ids (and a bootstrap draws exactly the
    image bootstrap's resamples); ``None``: every image its own group."""
    if groups is None:
        return np.arange(n)
    ids = np.asarray(groups)
    if ids.shape != (n,):
        raise ValueError(f"need one group id per image: {n} images, groups of shape {ids.shape}")
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse.reshape(n)]


def one_per_group(groups) -> np.ndarray:
    """Positions of each group's first image, in image order: a test set where every source
    counts once. Which image is first is the caller's order; the report passes tensor-set order,
    where originals precede augmented copies, so a representative is an original scan whenever
    the test set holds one."""
    ids = np.asarray(groups)
    return np.sort(np.unique(ids, return_index=True)[1])


def bootstrap_metrics(
    y_true,
    probs,
    thresholds,
    groups=None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = CONFIDENCE,
) -> dict[str, dict]:
    """Percentile bootstrap intervals of the scores of k models on one test set, resampling
    source groups (the cluster bootstrap).

    ``probs`` is k×N (or N for one model), ``thresholds`` one decision threshold per model,
    ``groups`` one id per image (None: every image its own group, the image bootstrap). The
    estimate is the mean over models of each model's score at its own threshold (undefined scores
    skipped, as in ``braintl.results``). A resample draws G of the G groups with replacement; a
    drawn group brings all its images, so resamples differ in size when groups do. It is drawn
    *once* and every model is scored on it, so the interval reflects the sampling variation of
    the fold-averaged score. With singleton groups the draws, hence the intervals, are the
    image bootstrap's for the same seed, whatever the ids.

    A resample on which a score is undefined (AUC, recall or specificity with one class drawn;
    precision with nothing called tumor) is left out of that score's interval and counted in
    ``skipped``: conditioning on a defined score is what redrawing until it is defined does, with
    no loop of unknown length. ``resamples`` counts the ones kept.
    """
    y, p, t = _models(y_true, probs, thresholds)
    members = group_members(groups, len(y))
    n_groups = int(members.max()) + 1
    if n_groups < 2:
        raise ValueError(
            "a bootstrap needs at least two groups: with one, every resample is the same images "
            "and the interval would be a point. Score more than one source scan."
        )
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples}, {level}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(resamples, n_groups))
    offsets = (np.arange(resamples) * n_groups)[:, None]
    times = np.bincount((draws + offsets).ravel(), minlength=resamples * n_groups)
    weights = times.reshape(resamples, n_groups)[:, members].astype(np.float64)
    point = _scores(y, p, t, np.ones((1, len(y))))
    boot = _scores(y, p, t, weights)
    tail = (1 - level) / 2 * 100
    out = {}
    for name in BOOTSTRAP_METRICS:
        values = boot[name][np.isfinite(boot[name])]
        low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (math.nan,) * 2
        out[name] = {
            "estimate": float(point[name][0]),
            "low": float(low),
            "high": float(high),
            "resamples": int(len(values)),
            "skipped": resamples - int(len(values)),
            "level": level,
        }
    return json_safe(out)


def _models(y_true, probs, thresholds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if p.ndim != 2 or len(p) == 0 or len(t) != len(p):
        raise ValueError(
            f"need probs k×N with k >= 1 and one threshold per model, got shape {p.shape} and "
            f"{len(t)} thresholds"
        )
    y = check_predictions(y_true, p[0])[0]
    for row in p[1:]:
        check_predictions(y, row)
    return y, p, t


def _scores(y: np.ndarray, p: np.ndarray, t: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of k models (``p`` k×N at thresholds ``t``) on B resamples given as weights ``w``
    (B×N: how many times each image was drawn); each score is averaged over the models where it
    is defined, giving one value per resample."""
    pred = p >= t[:, None]
    pos = y == 1
    tp, fp = w @ (pred & pos).T, w @ (pred & ~pos).T  # B×k
    fn, tn = (w @ pos)[:, None] - tp, (w @ ~pos)[:, None] - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        per_model = {
            "accuracy": (tp + tn) / w.sum(axis=1, keepdims=True),
            "precision": tp / (tp + fp),
            "recall": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "auc": np.stack([weighted_auc(pos, row, w) for row in p], axis=1),
        }
    out = {}
    for name, values in per_model.items():
        values = np.where(np.isfinite(values), values, np.nan)
        defined = np.isfinite(values).sum(axis=1)
        total = np.nansum(values, axis=1)
        out[name] = np.divide(total, defined, out=np.full(total.shape, np.nan), where=defined > 0)
    return out


def delong_test(y_true, prob_a, prob_b, groups=None) -> dict[str, float]:
    """Whether two models' ROC AUCs on the same images differ, counting each source group once.

    Obuchowski's (1997) clustered form of DeLong, DeLong & Clarke-Pearson (1988). Each image's
    structural component (a tumor image: the share of no-tumor images it outranks, ties one half;
    a no-tumor image: the share of tumor images outranking it) is summed over its group; the
    variance of AUC_a − AUC_b comes from the spread of these group sums across groups, plus the
    covariance of a group's tumor and no-tumor sums when a group holds both. With every image
    its own group this is DeLong's test exactly. Chosen over a paired group bootstrap of the
    difference because it is analytic: the p-value is deterministic and not limited to steps of
    1/resamples, which matters once Holm multiplies it by the number of comparisons.

    Returns ``auc_a``, ``auc_b``, ``diff``, ``se``, ``z``, two-sided ``p`` (NaN where undefined)
    and ``groups``. Needs tumor images in two groups and no-tumor images in two groups.
    """
    y, a = check_predictions(y_true, prob_a)
    _, b = check_predictions(y_true, prob_b)
    members = group_members(groups, len(y))
    pos, neg = y == 1, y == 0
    tumor_groups, no_tumor_groups = len(np.unique(members[pos])), len(np.unique(members[neg]))
    if tumor_groups < 2 or no_tumor_groups < 2:
        raise ValueError(
            "DeLong's test needs tumor images in at least two groups and no-tumor images in at "
            f"least two (each image is its own group unless groups are given), got "
            f"{tumor_groups} and {no_tumor_groups}"
        )
    m, n, n_groups = int(pos.sum()), int(neg.sum()), int(members.max()) + 1
    (v10_a, v01_a), (v10_b, v01_b) = auc_placements(y, a), auc_placements(y, b)
    aucs = [float(v10_a.mean()), float(v10_b.mean())]
    delta = aucs[0] - aucs[1]
    # Per group: summed components of the difference, centred on their expectation.
    tumor = np.bincount(members[pos], weights=v10_a - v10_b, minlength=n_groups)
    tumor -= np.bincount(members[pos], minlength=n_groups) * delta
    no_tumor = np.bincount(members[neg], weights=v01_a - v01_b, minlength=n_groups)
    no_tumor -= np.bincount(members[neg], minlength=n_groups) * delta
    variance = (
        tumor_groups / (tumor_groups - 1) * (tumor @ tumor) / m**2
        + no_tumor_groups / (no_tumor_groups - 1) * (no_tumor @ no_tumor) / n**2
        + 2 * n_groups / (n_groups - 1) * (tumor @ no_tumor) / (m * n)
    )
    se = math.sqrt(max(float(variance), 0.0))
    z = delta / se if se > 0 else math.nan
    p = math.erfc(abs(z) / math.sqrt(2)) if se > 0 else (1.0 if delta == 0 else math.nan)
    return {
        "auc_a": aucs[0],
        "auc_b": aucs[1],
        "diff": delta,
        "se": se,
        "z": z,
        "p": p,
        "groups": n_groups,
    }


def holm(p_values) -> list[float]:
    """Holm–Bonferroni adjusted p-values (Holm 1979) of one family of tests, such as the best
    model against each other model: with m tests, the i-th smallest p is multiplied by
    m − i + 1, the products are made non-decreasing in that order and capped at 1. Rejecting
    where an adjusted p ≤ α keeps the chance of any false rejection at α, as Bonferroni does,
    with more power. An undefined p (None or NaN: a test that could not run) is not part of the
    family and stays NaN."""
    p = np.array([math.nan if v is None else v for v in p_values], dtype=np.float64)
    defined = np.flatnonzero(np.isfinite(p))
    if ((p[defined] < 0) | (p[defined] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p[defined].tolist()}")
    order = defined[np.argsort(p[defined], kind="stable")]
    m = len(order)
    adjusted = np.full(len(p), math.nan)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adjusted.tolist()
