"""The report's group-level statistics without a flow: group ids from predictions records (old
records without them too), group- and image-bootstrap intervals, one image per group, and
DeLong's test with Holm-adjusted p-values across models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from braintl.report.collect import FoldPredictions, fold_predictions
from braintl.report.compare import delong_against_best, first_image_per_group, model_statistics
from braintl.uncertainty import bootstrap_metrics, delong_test, holm

SOURCES = 60


def _record(path, index, prob, group=None, val=None) -> str:
    """A fold's metrics.json; ``val`` default: the fold validated on image ``path``'s digit."""
    test = {"index": index, "prob": prob} | ({} if group is None else {"group": group})
    val = val or {"index": [int(path.stem[-1])], "prob": [0.5]}
    predictions = {"test": test, "val": val}
    path.write_text(json.dumps({"evaluation": {"predictions": predictions}}))
    return str(path)


def test_groups_come_from_the_record_or_for_old_records_from_the_tensor_set(tmp_path):
    labels, groups = np.arange(10) % 2, np.arange(10) // 2
    index = [1, 4, 5, 8]
    recorded = [70, 71, 71, 72]  # the record's own ids win over the tensor set's
    runs = {
        "new": [_record(tmp_path / f"new{k}.json", index, [0.2] * 4, recorded) for k in (0, 1)],
        "old": [_record(tmp_path / f"old{k}.json", index, [0.6] * 4) for k in (0, 1)],
    }
    results = {
        "models": [
            {
                "model": name,
                "runs": [
                    {"metrics_url": url, "threshold": 0.5, "fold": k} for k, url in enumerate(urls)
                ],
            }
            for name, urls in runs.items()
        ]
    }
    preds = fold_predictions(results, labels, groups)
    assert preds["new"].groups.tolist() == recorded
    assert preds["old"].groups.tolist() == [0, 2, 2, 4]
    assert preds["old"].y.tolist() == [1, 0, 1, 0] and preds["old"].probs.shape == (2, 4)


def test_the_ensemble_threshold_is_youdens_on_the_out_of_fold_predictions(tmp_path):
    """Each fold model's validation images, scored by it alone, pooled: the pooled list's best
    cut is neither fold's own."""
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1])
    vals = [
        {"index": [0, 1, 2, 3], "prob": [0.9, 0.6, 0.2, 0.7]},  # own cut 0.9 (J 0.5)
        {"index": [4, 5, 6, 7], "prob": [0.8, 0.1, 0.4, 0.3]},  # own cut 0.4 (J 1)
    ]
    urls = [_record(tmp_path / f"f{k}.json", [8], [0.5], val=v) for k, v in enumerate(vals)]
    results = {"models": [{"model": "m", "runs": [
        {"metrics_url": u, "threshold": 0.5, "fold": k} for k, u in enumerate(urls)
    ]}]}  # fmt: skip
    # Pooled, tumor 0.9 0.8 0.4 0.2 and no tumor 0.7 0.6 0.3 0.1: at 0.8 J = 1/2 - 0 = 0.5;
    # at 0.4 J = 3/4 - 2/4; at 0.9 J = 1/4; at 0.2 J = 1 - 3/4.
    assert fold_predictions(results, labels, np.arange(9))["m"].threshold == 0.8
    _record(tmp_path / "f1.json", [8], [0.5], val={"index": [3, 4], "prob": [0.1, 0.2]})
    with pytest.raises(ValueError, match="overlapping images"):
        fold_predictions(results, labels, np.arange(9))


def _copies(seed: int = 0, shift: float = 0.0) -> FoldPredictions:
    """Every source scan three times (copies at tensor indices 60..179), listed shuffled."""
    rng = np.random.default_rng(seed)
    y = np.arange(SOURCES) % 2
    probs = np.clip(np.round(0.3 + (0.2 + shift) * y + 0.5 * rng.random((2, SOURCES)), 2), 0, 1)
    order = np.random.default_rng(99).permutation(3 * SOURCES)
    return FoldPredictions(
        index=np.arange(3 * SOURCES)[order],
        y=np.tile(y, 3)[order],
        groups=np.tile(100 + np.arange(SOURCES), 3)[order],
        probs=np.tile(probs, 3)[:, order],
        thresholds=np.array([0.5, 0.55]),
        threshold=0.7,
        folds=[0, 1],
    )


def test_model_statistics_count_a_scan_and_its_copies_once():
    pred = _copies()
    stats = model_statistics(pred, resamples=400, seed=1)
    first = first_image_per_group(pred)
    assert sorted(pred.index[first].tolist()) == list(range(SOURCES))  # the originals
    originals = bootstrap_metrics(
        pred.y[first], pred.mean_prob[first], [pred.threshold], resamples=400, seed=1
    )
    assert stats["test_one_per_group"] == originals
    assert stats["bootstrap"]["text"] == "group bootstrap, 60 groups, 180 images"
    assert (stats["n_test"], stats["n_groups"]) == (180, 60)
    for name, grouped in stats["test_bootstrap"].items():
        images = stats["test_bootstrap_images"][name]
        assert grouped["estimate"] == pytest.approx(originals[name]["estimate"])
        assert images["high"] - images["low"] < 0.75 * (grouped["high"] - grouped["low"])
    assert stats["per_class_accuracy"]["tumor"] == stats["test_bootstrap"]["recall"]


def test_delong_against_best_counts_groups_once_and_holm_adjusts():
    best, weaker, worse = _copies(0, shift=0.3), _copies(1, shift=0.1), _copies(2)
    rows = delong_against_best({"best": best, "weaker": weaker, "worse": worse}, "best")
    assert [r["other"] for r in rows] == ["weaker", "worse"]
    for row, other in zip(rows, (weaker, worse), strict=True):
        expected = delong_test(best.y, best.mean_prob, other.mean_prob, best.groups)
        assert row["p"] == pytest.approx(expected["p"]) and row["groups"] == SOURCES
        assert row["p_images"] < row["p"] and row["images"] == 3 * SOURCES
    assert [r["p_holm"] for r in rows] == pytest.approx(holm([r["p"] for r in rows]))
    moved = FoldPredictions(**{**worse.__dict__, "index": worse.index + 1})
    with pytest.raises(ValueError, match="tested on different images"):
        delong_against_best({"best": best, "worse": moved}, "best")
