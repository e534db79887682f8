"""Group-level uncertainty: the cluster bootstrap, DeLong's test counting a group once, Holm's
adjustment and one image per group, against explicit resampling and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from braintl.metrics import evaluate
from braintl.uncertainty import (
    BOOTSTRAP_METRICS,
    bootstrap_metrics,
    delong_test,
    holm,
    one_per_group,
)


def _scores(n: int, models: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return y, np.round(0.3 + 0.2 * y + 0.5 * rng.random((models, n)), 2)  # rounding: ties


def _explicit_bootstrap(y, probs, thresholds, groups, resamples, seed) -> dict[str, dict]:
    """The cluster bootstrap spelled out: draw G group ids, concatenate their images, score
    each model with ``evaluate`` (checked against scikit-learn) and average defined scores."""
    ids = list(dict.fromkeys(groups.tolist()))  # in order of first appearance
    members = [np.flatnonzero(groups == g) for g in ids]
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))
    values = {name: [] for name in BOOTSTRAP_METRICS}
    for draw in draws:
        idx = np.concatenate([members[j] for j in draw])
        calls = [evaluate(y[idx], p[idx], t) for p, t in zip(probs, thresholds, strict=True)]
        for name in BOOTSTRAP_METRICS:
            defined = [v for c in calls if math.isfinite(v := getattr(c, name))]
            values[name].append(np.mean(defined) if defined else math.nan)
    out = {}
    for name, series in values.items():
        kept = np.array([v for v in series if math.isfinite(v)])
        low, high = np.percentile(kept, [2.5, 97.5])
        out[name] = {"low": low, "high": high, "resamples": len(kept)}
    return out


@pytest.mark.parametrize(
    "groups",
    [
        None,  # the image bootstrap
        [9, 3, 7, 0, 11, 5, 2, 8, 1, 10, 4, 6],  # singletons: the same, whatever the ids
        [0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 4, 5],  # unequal sizes; group 0 mixes the classes
        ["b", "a", "b", "c", "a", "d", "e", "f", "f", "g", "h", "h"],  # ids in any order, any type
    ],
)
def test_cluster_bootstrap_equals_resampling_groups_by_hand(groups):
    y, probs = _scores(12)
    thresholds = [0.5, 0.45, 0.55]
    out = bootstrap_metrics(y, probs, thresholds, groups, resamples=300, seed=5)
    unit = np.arange(len(y)) if groups is None else np.asarray(groups)
    expected = _explicit_bootstrap(y, probs, thresholds, unit, resamples=300, seed=5)
    for name in BOOTSTRAP_METRICS:
        assert out[name]["low"] == pytest.approx(expected[name]["low"])
        assert out[name]["high"] == pytest.approx(expected[name]["high"])
        assert out[name]["resamples"] == expected[name]["resamples"]
        assert out[name]["resamples"] + out[name]["skipped"] == 300
    point = [evaluate(y, p, t).auc for p, t in zip(probs, thresholds, strict=True)]
    assert out["auc"]["estimate"] == pytest.approx(np.mean([roc_auc_score(y, p) for p in probs]))
    assert out["auc"]["estimate"] == pytest.approx(np.mean(point))


def test_singleton_groups_are_the_image_bootstrap_whatever_their_ids():
    y, probs = _scores(50)
    ids = np.random.default_rng(1).permutation(1000)[:50]
    images = bootstrap_metrics(y, probs, [0.5] * 3, seed=8)
    assert bootstrap_metrics(y, probs, [0.5] * 3, ids, seed=8) == images
    assert bootstrap_metrics(y, probs, [0.5] * 3, ids.astype(str), seed=8) == images


def test_undefined_resamples_are_skipped_and_counted():
    # Five images, three tumors, two called tumor (.9, .8). A resample of five leaves
    # recall undefined with no tumor drawn, (2/5)^5 = 1.0 %; specificity with no no-tumor,
    # (3/5)^5 = 7.8 %; precision with neither called image, (3/5)^5; the AUC with either
    # class missing, 8.8 %. Observed shares within 3 binomial sd of 2000 draws.
    y = np.array([1, 1, 1, 0, 0])
    out = bootstrap_metrics(y, [0.9, 0.8, 0.3, 0.4, 0.1], [0.5], resamples=2000, seed=0)
    expected = {"recall": 0.4**5, "specificity": 0.6**5, "precision": 0.6**5}
    expected["auc"] = expected["recall"] + expected["specificity"]
    for name, share in expected.items():
        assert out[name]["skipped"] / 2000 == pytest.approx(share, abs=3 * (share / 2000) ** 0.5)
        assert out[name]["resamples"] == 2000 - out[name]["skipped"]
    assert out["accuracy"]["skipped"] == 0  # always defined


def test_copies_grouped_with_their_source_give_the_sources_interval():
    """Every scan three times: resampling groups is resampling the scans (same seed, same
    interval), while resampling images takes the copies for new cases and narrows it."""
    y, probs = _scores(60)
    thresholds = [0.5, 0.5, 0.6]
    y3, probs3 = np.tile(y, 3), np.tile(probs, 3)
    groups = np.tile(np.arange(60), 3)
    sources = bootstrap_metrics(y, probs, thresholds, seed=2)
    grouped = bootstrap_metrics(y3, probs3, thresholds, groups, seed=2)
    images = bootstrap_metrics(y3, probs3, thresholds, seed=2)
    for name in BOOTSTRAP_METRICS:
        for field in ("estimate", "low", "high", "resamples"):
            assert grouped[name][field] == pytest.approx(sources[name][field])
        group_width = grouped[name]["high"] - grouped[name]["low"]
        image_width = images[name]["high"] - images[name]["low"]
        assert image_width < 0.75 * group_width  # about 1/√3 as wide


def test_bootstrap_names_what_it_cannot_do():
    y, probs = _scores(6)
    with pytest.raises(ValueError, match="at least two groups"):
        bootstrap_metrics(y, probs, [0.5] * 3, groups=[7] * 6)
    with pytest.raises(ValueError, match="one group id per image"):
        bootstrap_metrics(y, probs, [0.5] * 3, groups=[0, 1, 2])


def test_clustered_delong_by_hand_with_a_group_of_both_classes():
    # Groups: g0 = {tumor .9/.6, no tumor .5/.6}, g1 = {tumor .4/.7}, g2 = {no tumor .1/.2}.
    # a: V10 = (1, ½), V01 = (½, 1), AUC ¾.  b: V10 = (¾, 1), V01 = (¾, 1), AUC ⅞ (a tie).
    # Differences centred per group (Δ = −⅛): tumor (⅜, −⅜, 0), no tumor (−⅛, 0, ⅛).
    # var = 2·(9/32)/4 + 2·(1/32)/4 + 2·(3/2)·(−3/64)/4 = 9/64 + 1/64 − 9/256 = 31/256.
    y = [1, 1, 0, 0]
    out = delong_test(y, [0.9, 0.4, 0.5, 0.1], [0.6, 0.7, 0.6, 0.2], groups=[0, 1, 0, 2])
    assert out["auc_a"] == pytest.approx(3 / 4) == roc_auc_score(y, [0.9, 0.4, 0.5, 0.1])
    assert out["auc_b"] == pytest.approx(7 / 8) == roc_auc_score(y, [0.6, 0.7, 0.6, 0.2])
    assert out["se"] == pytest.approx(math.sqrt(31) / 16)
    assert out["z"] == pytest.approx(-2 / math.sqrt(31))
    assert out["p"] == pytest.approx(math.erfc(math.sqrt(2 / 31)))
    assert out["groups"] == 3


def test_clustered_delong_counts_copies_once():
    y, probs = _scores(80, models=2)
    sources = delong_test(y, probs[0], probs[1])
    y3, a3, b3 = np.tile(y, 3), np.tile(probs[0], 3), np.tile(probs[1], 3)
    grouped = delong_test(y3, a3, b3, groups=np.tile(np.arange(80), 3))
    images = delong_test(y3, a3, b3)
    for field in ("auc_a", "auc_b", "diff", "se", "z", "p"):
        assert grouped[field] == pytest.approx(sources[field])
    # Image-level variance per class: Σ(V − θ)² / ((3M − 1)·M) against / ((M − 1)·M), M = 40.
    assert images["se"] == pytest.approx(sources["se"] * math.sqrt(39 / 119))
    assert images["p"] < grouped["p"]


def test_clustered_delong_of_identical_models_and_its_limits():
    y, probs = _scores(30, models=1)
    groups = np.arange(30) // 3
    same = delong_test(y, probs[0], probs[0], groups)
    assert (same["diff"], same["se"], same["p"]) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="tumor images in at least two groups"):
        delong_test([1, 1, 0, 0, 0], [0.9, 0.8, 0.1, 0.2, 0.3], [0.5] * 5, groups=[0, 0, 1, 2, 3])


def test_holm_by_hand():
    # Sorted .005 .01 .03 .04 times 4 3 2 1: .02 .03 .06 .04 → non-decreasing .02 .03 .06 .06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # .6·2 = 1.2 capped at 1; .9 is then raised to 1 to stay monotone.
    assert holm([0.9, 0.6]) == [1.0, 1.0]
    assert holm([0.2]) == [0.2]
    assert holm([]) == []


def test_holm_leaves_undefined_tests_out_of_the_family():
    adjusted = holm([0.01, None, 0.02, math.nan])
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.02)
    assert math.isnan(adjusted[1]) and math.isnan(adjusted[3])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        holm([0.5, 1.5])


def test_holm_lies_between_the_raw_p_and_bonferroni():
    p = np.random.default_rng(3).random(12) ** 3
    adjusted = np.array(holm(p))
    assert np.all(adjusted >= p) and np.all(adjusted <= np.minimum(1, 12 * p))
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)


def test_one_per_group_takes_each_groups_first_image():
    assert one_per_group([5, 3, 5, 3, 7]).tolist() == [0, 1, 4]
    assert one_per_group(["x", "x", "y"]).tolist() == [0, 2]
    assert one_per_group(np.arange(4)).tolist() == [0, 1, 2, 3]
