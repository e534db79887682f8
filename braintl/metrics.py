"""Binary tumor / no-tumor scores from labels and predicted tumor probabilities.

Every score comes from ``(y_true, prob)`` and a decision threshold: an image is called
*tumor* when ``prob >= threshold``. Two thresholds are reported: the conventional 0.5 and
the Youden-optimal one, which must be chosen on validation data and then applied unchanged
to the test set — choosing it on the test set would leak the test labels into the score::

    threshold = youden_threshold(y_val, p_val)
    test = evaluate(y_test, p_test, threshold=threshold)

Scores that are undefined on the data at hand (AUC with one class present, precision with
nothing predicted positive, ...) are NaN, never an exception or a silent 0; ``to_dict``
turns them into ``None`` so the result is strict JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_THRESHOLD = 0.5
ECE_BINS = 10


@dataclass(frozen=True)
class BinaryMetrics:
    """Scores at one threshold. Class 1 is *tumor* (positive), class 0 *no tumor*."""

    threshold: float
    n: int
    n_tumor: int
    n_no_tumor: int
    accuracy: float
    precision: float
    recall: float
    specificity: float
    f1: float
    auc: float
    brier: float
    ece: float
    tn: int
    fp: int
    fn: int
    tp: int

    @property
    def sensitivity(self) -> float:
        return self.recall

    @property
    def per_class_accuracy(self) -> dict[str, float]:
        """The seed's per-class accuracy: the share of each true class classified correctly."""
        return {"tumor": self.recall, "no_tumor": self.specificity}

    @property
    def confusion_matrix(self) -> list[list[int]]:
        """Rows are the true class, columns the predicted one, both ordered (no_tumor, tumor)."""
        return [[self.tn, self.fp], [self.fn, self.tp]]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["sensitivity"] = self.sensitivity
        out["per_class_accuracy"] = self.per_class_accuracy
        out["confusion_matrix"] = self.confusion_matrix
        return json_safe(out)


@dataclass(frozen=True)
class ThresholdedMetrics:
    """One set of predictions scored at 0.5 and at a Youden threshold taken from validation."""

    at_default: BinaryMetrics
    at_youden: BinaryMetrics

    def to_dict(self) -> dict:
        return {"at_0.5": self.at_default.to_dict(), "at_youden": self.at_youden.to_dict()}


def evaluate(y_true, prob, threshold: float = DEFAULT_THRESHOLD) -> BinaryMetrics:
    """All scores of ``prob`` (tumor probabilities) against ``y_true`` (1 tumor, 0 no tumor)."""
    y, p = _check(y_true, prob)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    pred = p >= threshold
    tp, fp = int(np.sum(pred & (y == 1))), int(np.sum(pred & (y == 0)))
    fn, tn = int(np.sum(~pred & (y == 1))), int(np.sum(~pred & (y == 0)))
    both_classes = 0 < int(y.sum()) < len(y)
    return BinaryMetrics(
        threshold=float(threshold),
        n=len(y),
        n_tumor=tp + fn,
        n_no_tumor=tn + fp,
        accuracy=(tp + tn) / len(y),
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        auc=_rank_auc(y, p) if both_classes else math.nan,
        brier=float(np.mean((p - y) ** 2)),
        ece=expected_calibration_error(y, p),
        tn=tn,
        fp=fp,
        fn=fn,
        tp=tp,
    )


def _rank_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC as the Mann–Whitney statistic on average ranks (ties count one half), which is
    what ``sklearn.metrics.roc_auc_score`` computes; both classes must be present. In numpy, as
    all of this module's scores: a training worker need not import scikit-learn (~1 s)."""
    order = np.argsort(p, kind="stable")
    ordered = p[order]
    new = np.r_[True, ordered[1:] != ordered[:-1]]
    tie = np.cumsum(new) - 1  # tie group of each sorted position
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(p)]
    ranks = np.empty(len(p))
    ranks[order] = ((starts + ends + 1) / 2)[tie]  # 1-based average rank of each group
    positives = int(y.sum())
    negatives = len(y) - positives
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def evaluate_at_thresholds(y_true, prob, youden: float) -> ThresholdedMetrics:
    """Scores at 0.5 and at ``youden``, which the caller took from :func:`youden_threshold`
    on *validation* predictions (pass the same value for the validation and the test set)."""
    return ThresholdedMetrics(evaluate(y_true, prob), evaluate(y_true, prob, threshold=youden))


def youden_threshold(y_val, p_val) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity − 1 on validation data.

    The result is one of the validation probabilities (the rule is ``prob >= threshold``); on
    ties the highest such threshold wins. When J cannot be positive — one class only, or
    predictions carrying no information — there is nothing to optimise and 0.5 is returned.
    """
    y, p = _check(y_val, p_val)
    if not 0 < int(y.sum()) < len(y):
        return DEFAULT_THRESHOLD
    fpr, tpr, thresholds = roc_points(y, p)
    j = tpr - fpr
    best = int(np.argmax(j))
    if j[best] <= 0:
        return DEFAULT_THRESHOLD
    return float(thresholds[best])


def roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, threshold) at every distinct probability, highest threshold first: the
    points of ``sklearn.metrics.roc_curve(y, p, drop_intermediate=False)`` but its (0, 0)."""
    order = np.argsort(-p, kind="stable")
    ordered, hits = p[order], y[order]
    last = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), len(p) - 1]  # end of each value
    tp = np.cumsum(hits)[last]
    fp = (last + 1) - tp
    return fp / (len(y) - hits.sum()), tp / hits.sum(), ordered[last]


def expected_calibration_error(y_true, prob, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of the tumor probability, with ``n_bins`` equal-width bins.

    Bin ``k`` holds ``k/n_bins <= prob < (k+1)/n_bins`` (the last bin includes 1.0);
    ECE = Σ_k (|bin k| / N) · |mean(y in bin k) − mean(prob in bin k)|. This scores the
    positive-class probability (the reliability diagram of P(tumor)), not the top-label
    confidence, so it reads the same whichever class is predicted.
    """
    y, p = _check(y_true, prob)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    label_sum = np.bincount(bins, weights=y, minlength=n_bins)
    gap = np.abs(label_sum - np.bincount(bins, weights=p, minlength=n_bins))
    # |Σy − Σp| over the bin is |bin| · |mean y − mean p|, so dividing by N gives the weighted gap.
    return float(gap[counts > 0].sum() / len(y))


def _check(y_true, prob) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
        raise ValueError(
            f"y_true and prob must be 1-D and of equal length, got shapes {y.shape} and {p.shape}"
        )
    if len(y) == 0:
        raise ValueError("cannot score an empty set of predictions")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must hold only 0 (no tumor) and 1 (tumor), got {np.unique(y)}")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("prob must hold finite probabilities in [0, 1]")
    return y.astype(np.int64), p


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def json_safe(obj):
    """``obj`` with NaN floats (undefined scores) replaced by ``None``, so it is strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


# Scores the report bootstraps: the threshold-dependent ones and the AUC.
BOOTSTRAP_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


def bootstrap_metrics(
    y_true,
    probs,
    thresholds,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = CONFIDENCE,
) -> dict[str, dict]:
    """Percentile bootstrap intervals of the scores of k models on one test set.

    ``probs`` is k×N (or N for one model), ``thresholds`` one decision threshold per model.
    The estimate is the mean over models of each model's score at its own threshold (undefined
    scores skipped, as in ``braintl.results``). A resample draws N images with replacement
    *once* and scores every model on those same images, so the interval reflects the test set's
    sampling variation of the fold-averaged score. Resamples where a score is undefined (one
    class drawn) are left out; ``resamples`` says how many counted.
    """
    y, p, t = _models(y_true, probs, thresholds)
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples}, {level}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(y), size=(resamples, len(y)))
    point = _scores(y[None, :], p[:, None, :], t)
    boot = _scores(y[draws], p[:, draws], t)
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
    y = _check(y_true, p[0])[0]
    for row in p[1:]:
        _check(y, row)
    return y, p, t


def _scores(y: np.ndarray, p: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of k models on B samples: ``y`` B×N labels, ``p`` k×B×N probabilities; each
    score is averaged over the models where it is defined, giving one value per sample."""
    pred = p >= t[:, None, None]
    pos = y.astype(bool)[None]
    tp = (pred & pos).sum(-1)
    fp = (pred & ~pos).sum(-1)
    fn = (~pred & pos).sum(-1)
    tn = (~pred & ~pos).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_model = {
            "accuracy": (tp + tn) / y.shape[-1],
            "precision": tp / (tp + fp),
            "recall": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "auc": _auc_rows(np.broadcast_to(pos, p.shape), p),
        }
    out = {}
    for name, values in per_model.items():
        values = np.where(np.isfinite(values), values, np.nan)
        defined = np.isfinite(values).sum(0)
        total = np.nansum(values, axis=0)
        out[name] = np.divide(total, defined, out=np.full(total.shape, np.nan), where=defined > 0)
    return out


def _auc_rows(pos: np.ndarray, p: np.ndarray) -> np.ndarray:
    """ROC AUC along the last axis (Mann–Whitney U from mid-ranks, ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(p, axis=-1)
    n1 = pos.sum(-1)
    n0 = pos.shape[-1] - n1
    u = (ranks * pos).sum(-1) - n1 * (n1 + 1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)


def delong_test(y_true, prob_a, prob_b) -> dict[str, float]:
    """DeLong's test that two correlated ROC AUCs, of two models on the same images, are equal.

    DeLong, DeLong & Clarke-Pearson (1988): each AUC's structural components (per positive,
    the share of negatives it outranks; per negative, the share of positives outranking it)
    give the covariance of the two AUCs; z = (AUC_a − AUC_b) / se, two-sided p. Returns
    ``auc_a``, ``auc_b``, ``diff``, ``se``, ``z``, ``p`` (NaN where undefined).
    """
    y, a = _check(y_true, prob_a)
    _, b = _check(y_true, prob_b)
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        raise ValueError(
            f"DeLong's test needs at least two images of each class, got {m} tumor, {n} no tumor"
        )
    v10, v01 = [], []
    for scores in (a, b):
        # psi[i, j] = 1 if positive i outranks negative j, 0.5 on a tie, 0 otherwise.
        diff = scores[pos][:, None] - scores[neg][None, :]
        psi = (diff > 0) + 0.5 * (diff == 0)
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    s10, s01 = np.cov(np.stack(v10)), np.cov(np.stack(v01))
    contrast = np.array([1.0, -1.0])
    variance = contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n
    auc_a, auc_b = float(v10[0].mean()), float(v10[1].mean())
    se = math.sqrt(max(float(variance), 0.0))
    z = (auc_a - auc_b) / se if se > 0 else math.nan
    p = math.erfc(abs(z) / math.sqrt(2)) if se > 0 else (1.0 if auc_a == auc_b else math.nan)
    return {"auc_a": auc_a, "auc_b": auc_b, "diff": auc_a - auc_b, "se": se, "z": z, "p": p}


def reliability_bins(y_true, prob, n_bins: int = ECE_BINS) -> list[dict]:
    """The reliability diagram behind :func:`expected_calibration_error`: per non-empty bin,
    its range, image count, mean predicted probability and observed share of tumors."""
    y, p = _check(y_true, prob)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    out = []
    for k in np.unique(bins):
        inside = bins == k
        out.append(
            {
                "low": k / n_bins,
                "high": (k + 1) / n_bins,
                "n": int(inside.sum()),
                "mean_prob": float(p[inside].mean()),
                "observed": float(y[inside].mean()),
            }
        )
    return out
