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
    y, p = check_predictions(y_true, prob)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    pred = p >= threshold
    tp, fp = int(np.sum(pred & (y == 1))), int(np.sum(pred & (y == 0)))
    fn, tn = int(np.sum(~pred & (y == 1))), int(np.sum(~pred & (y == 0)))
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
        auc=float(weighted_auc(y, p, np.ones(len(y)))[0]),
        brier=float(np.mean((p - y) ** 2)),
        ece=expected_calibration_error(y, p),
        tn=tn,
        fp=fp,
        fn=fn,
        tp=tp,
    )


def weighted_auc(positive: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``prob`` once per row of ``weights`` (B×N: how many times each image counts),
    NaN where a row weighs only one class.

    The Mann–Whitney statistic with ties counting one half, which is what
    ``sklearn.metrics.roc_auc_score`` computes on the images repeated that many times. Weights
    let a bootstrap score B resamples after sorting once: a resample changes how often an image
    counts, never its order. All-ones weights give the plain AUC. In numpy, as all of this
    module's scores: a training worker need not import scikit-learn (~1 s).
    """
    w = np.atleast_2d(weights).astype(np.float64)
    pos = np.asarray(positive).astype(bool)
    credit = _weight_below(prob[pos], prob[~pos], w[:, ~pos])
    n_pos, n_neg = w[:, pos].sum(axis=1), w[:, ~pos].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (w[:, pos] * credit).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def auc_placements(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: per tumor image the share of no-tumor images it
    outranks, per no-tumor image the share of tumor images outranking it (ties one half).
    Either mean is the AUC; their spread is DeLong's variance. Needs both classes."""
    pos = np.asarray(y).astype(bool)
    ones = np.ones((1, len(p)))
    tumor = _weight_below(p[pos], p[~pos], ones[:, ~pos])[0] / (~pos).sum()
    no_tumor = _weight_below(-p[~pos], -p[pos], ones[:, pos])[0] / pos.sum()
    return tumor, no_tumor


def _weight_below(scores: np.ndarray, reference: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per row of ``weights`` (B × len(reference)) and per score: the weight of the reference
    values below it plus half of those equal to it. One sort and two binary searches, so
    O(N log N + B·N): the rank form of the Mann–Whitney count, ties included."""
    order = np.argsort(reference, kind="stable")
    cumulative = np.zeros((len(weights), len(reference) + 1))
    np.cumsum(weights[:, order], axis=1, out=cumulative[:, 1:])
    ordered = reference[order]
    low, high = np.searchsorted(ordered, scores, "left"), np.searchsorted(ordered, scores, "right")
    return 0.5 * (cumulative[:, low] + cumulative[:, high])


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
    y, p = check_predictions(y_val, p_val)
    if not 0 < int(y.sum()) < len(y):
        return DEFAULT_THRESHOLD
    fpr, tpr, thresholds = roc_curve(y, p)
    j = tpr - fpr
    best = int(np.argmax(j))
    if j[best] <= 0:
        return DEFAULT_THRESHOLD
    return float(thresholds[best])


def roc_curve(y_true, prob) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, threshold) from (0, 0) at threshold ∞ through every distinct probability,
    highest first: ``sklearn.metrics.roc_curve(y, p, drop_intermediate=False)``. With one class
    only, the rates of the missing class are NaN (as sklearn's, without its warning)."""
    y, p = check_predictions(y_true, prob)
    order = np.argsort(-p, kind="stable")
    ordered, hits = p[order], y[order]
    last = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), len(p) - 1]  # end of each value
    tp = np.r_[0, np.cumsum(hits)[last]]
    fp = np.r_[0, last + 1] - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return fp / fp[-1], tp / tp[-1], np.r_[np.inf, ordered[last]]


def expected_calibration_error(y_true, prob, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of the tumor probability, with ``n_bins`` equal-width bins.

    Bin ``k`` holds ``k/n_bins <= prob < (k+1)/n_bins`` (the last bin includes 1.0);
    ECE = Σ_k (|bin k| / N) · |mean(y in bin k) − mean(prob in bin k)|. This scores the
    positive-class probability (the reliability diagram of P(tumor)), not the top-label
    confidence, so it reads the same whichever class is predicted.
    """
    y, p = check_predictions(y_true, prob)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    label_sum = np.bincount(bins, weights=y, minlength=n_bins)
    gap = np.abs(label_sum - np.bincount(bins, weights=p, minlength=n_bins))
    # |Σy − Σp| over the bin is |bin| · |mean y − mean p|, so dividing by N gives the weighted gap.
    return float(gap[counts > 0].sum() / len(y))


def check_predictions(y_true, prob) -> tuple[np.ndarray, np.ndarray]:
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


def reliability_bins(y_true, prob, n_bins: int = ECE_BINS) -> list[dict]:
    """The reliability diagram behind :func:`expected_calibration_error`: per non-empty bin,
    its range, image count, mean predicted probability and observed share of tumors."""
    y, p = check_predictions(y_true, prob)
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
