import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from braintl.metrics import (
    auc_placements,
    evaluate,
    evaluate_at_thresholds,
    expected_calibration_error,
    roc_curve,
    weighted_auc,
    youden_threshold,
)

Y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
P = np.array([0.1, 0.4, 0.6, 0.8, 0.35, 0.9, 0.7, 0.2])


def test_agrees_with_sklearn_on_random_arrays():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    for threshold in (0.5, 0.37):
        m = evaluate(y, p, threshold=threshold)
        pred = (p >= threshold).astype(int)
        assert m.accuracy == pytest.approx(skm.accuracy_score(y, pred))
        assert m.precision == pytest.approx(skm.precision_score(y, pred))
        assert m.recall == pytest.approx(skm.recall_score(y, pred))
        assert m.sensitivity == m.recall
        assert m.f1 == pytest.approx(skm.f1_score(y, pred))
        assert m.auc == pytest.approx(skm.roc_auc_score(y, p))
        assert m.brier == pytest.approx(skm.brier_score_loss(y, p))
        assert m.confusion_matrix == skm.confusion_matrix(y, pred).tolist()


def test_auc_and_accuracy_equal_sklearn_with_ties():
    """The training loop's per-epoch scores: ranks with ties averaged, as sklearn counts them."""
    rng = np.random.default_rng(1)
    for trial in range(300):
        n = int(rng.integers(2, 80))
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)  # both classes
        levels = rng.random(int(rng.integers(1, 6)))  # few distinct values: many ties
        p = rng.choice(levels, n) if trial % 2 else rng.random(n)
        scores = evaluate(y, p, threshold=0.4)
        auc, accuracy = scores.auc, scores.accuracy
        assert auc == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
        assert accuracy == pytest.approx(skm.accuracy_score(y, (p >= 0.4).astype(int)))
    assert math.isnan(evaluate([1, 1], [0.2, 0.9]).auc)


def test_weighted_auc_is_sklearns_on_the_repeated_images():
    """A weight is how often an image counts: the AUC of the images repeated that often."""
    rng = np.random.default_rng(3)
    for trial in range(100):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        p = rng.choice(rng.random(3), n) if trial % 2 else rng.random(n)
        weights = rng.integers(0, 4, size=(5, n))
        weights[:, :2] = 1  # both classes in every row
        got = weighted_auc(y, p, weights)
        for row, w in zip(got, weights, strict=True):
            assert row == pytest.approx(skm.roc_auc_score(np.repeat(y, w), np.repeat(p, w)))
    one_class = weighted_auc(np.array([1, 0]), np.array([0.3, 0.6]), np.array([[2, 0], [1, 1]]))
    assert math.isnan(one_class[0]) and one_class[1] == 0.0


def _scores_with_ties(rng: np.random.Generator, trial: int, n_max: int):
    """Labels of both classes and probabilities, every other draw from a few levels (ties)."""
    n = int(rng.integers(2, n_max))
    y = rng.integers(0, 2, n)
    y[:2] = (0, 1)
    return y, rng.choice(rng.random(int(rng.integers(1, 5))), n) if trial % 2 else rng.random(n)


def test_roc_curve_is_sklearns():
    rng = np.random.default_rng(2)
    for trial in range(200):
        y, p = _scores_with_ties(rng, trial, 60)
        got = roc_curve(y, p)
        want = skm.roc_curve(y, p, drop_intermediate=False)
        for ours, theirs in zip(got, want, strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    # One class: the rate of the missing class is undefined, as in sklearn (which warns).
    fpr, tpr, _ = roc_curve([1, 1, 1], [0.2, 0.5, 0.5])
    assert np.isnan(fpr).all() and tpr.tolist() == [0.0, 2 / 3, 1.0]


def test_placements_are_the_pairwise_comparisons_and_their_mean_sklearns_auc():
    """DeLong's components by rank equal the N×M table of pairs they replace."""
    rng = np.random.default_rng(4)
    for trial in range(100):
        y, p = _scores_with_ties(rng, trial, 50)
        tumor, no_tumor = auc_placements(y, p)
        diff = p[y == 1][:, None] - p[y == 0][None, :]
        psi = (diff > 0) + 0.5 * (diff == 0)
        np.testing.assert_allclose(tumor, psi.mean(axis=1), rtol=0, atol=1e-12)
        np.testing.assert_allclose(no_tumor, psi.mean(axis=0), rtol=0, atol=1e-12)
        assert tumor.mean() == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
        assert no_tumor.mean() == pytest.approx(tumor.mean(), abs=1e-12)
    # All tied: every pair counts one half.
    tumor, no_tumor = auc_placements(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.5]))
    assert tumor.tolist() == [0.5, 0.5] and no_tumor.tolist() == [0.5]


def test_hand_computed_example():
    m = evaluate(Y, P)
    # predicted tumor: 0.6, 0.8, 0.9, 0.7 -> tn 3 (0.1, 0.4, 0.2), fp 1 (0.6), fn 1 (0.35), tp 3
    assert (m.tn, m.fp, m.fn, m.tp) == (3, 1, 1, 3)
    assert m.specificity == pytest.approx(3 / 4)
    assert m.per_class_accuracy == {"tumor": 0.75, "no_tumor": 0.75}
    assert (m.n, m.n_tumor, m.n_no_tumor) == (8, 4, 4)
    sq = [0.01, 0.16, 0.36, 0.04, 0.4225, 0.01, 0.09, 0.04]
    assert m.brier == pytest.approx(sum(sq) / 8)


def test_ece_hand_computed():
    # one image per bin: gaps 0.05, 0.85, 0.85, 0.05
    assert expected_calibration_error([0, 1, 0, 1], [0.05, 0.15, 0.85, 0.95]) == pytest.approx(0.45)
    # two images share bin 6: mean label 0.5, mean prob 0.65
    assert expected_calibration_error([1, 0], [0.62, 0.68]) == pytest.approx(0.15)
    assert expected_calibration_error([1, 1, 0, 0], [0.5] * 4) == pytest.approx(0.0)
    # 1.0 falls in the last bin, not past it
    assert expected_calibration_error([1, 1], [1.0, 0.95]) == pytest.approx(0.025)
    assert expected_calibration_error([1, 0], [0.62, 0.68], n_bins=1) == pytest.approx(0.15)


def test_youden_maximises_j_over_validation_probabilities():
    t = youden_threshold(Y, P)

    def j(th):
        pred = np.greater_equal(P, th)
        return pred[Y == 1].mean() + (~pred[Y == 0]).mean() - 1

    assert t in P
    assert j(t) == pytest.approx(max(j(th) for th in P))
    # J is maximal at 0.7 (sens 0.75, spec 1.0); ties go to the highest threshold
    assert t == pytest.approx(0.7)


def test_threshold_from_validation_applies_unchanged_to_test():
    t = youden_threshold(Y, P)
    y_test = np.array([1, 1, 0, 0])
    p_test = np.array([0.69, 0.95, 0.1, 0.3])
    report = evaluate_at_thresholds(y_test, p_test, t)
    assert report.at_default.threshold == 0.5
    assert report.at_youden.threshold == t
    # 0.69 is below the validation threshold, although it would separate the test set perfectly
    assert report.at_youden.tp == 1 and report.at_default.tp == 2
    d = report.to_dict()
    assert set(d) == {"at_0.5", "at_youden"}


def test_degenerate_single_class_gives_nan_not_crash():
    m = evaluate([1, 1, 1], [0.2, 0.9, 0.7])
    assert math.isnan(m.auc) and math.isnan(m.specificity)
    assert m.recall == pytest.approx(2 / 3)
    assert youden_threshold([0, 0], [0.1, 0.9]) == 0.5
    d = m.to_dict()
    assert d["auc"] is None and d["per_class_accuracy"]["no_tumor"] is None
    json.dumps(d, allow_nan=False)
    none_predicted = evaluate([0, 1], [0.1, 0.2])
    assert math.isnan(none_predicted.precision) and none_predicted.recall == 0


def test_uninformative_predictions_fall_back_to_half():
    assert youden_threshold([0, 1, 0, 1], [0.3] * 4) == 0.5


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 2], [0.1, 0.2], "only 0"),
        ([0, 1], [0.1, 1.2], r"\[0, 1\]"),
        ([0, 1], [0.1], "equal length"),
        ([], [], "empty"),
    ],
)
def test_bad_input_is_named(y, p, message):
    with pytest.raises(ValueError, match=message):
        evaluate(y, p)
