"""The sweep's tuning fold is kept out of cross-validation (issue 14, item 3): fold 0 chooses the
hyper-parameters, folds 1..k-1 are trained and scored, and with no sweep all k folds are."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from braintl.metrics import json_safe
from braintl.results import METRICS, TUNING_FOLD, aggregate, best_model, cv_plan, to_markdown
from flows.params import RetrainParams

PARTS = {
    f"fold{k}": {"train": {"total": 40}, "val": {"total": 20}, "fold": {"total": 20}}
    for k in range(3)
}


def _record(fold: int, val_auc: float) -> dict:
    base = dict.fromkeys(METRICS, 0.5)
    return {
        "backbone": "vgg16",
        "strategy": "frozen",
        "fold": fold,
        "val": base | {"auc": val_auc},
        "test": base,
        "threshold": 0.5,
        "model_url": f"runs/r/folds/vgg16-frozen/fold-{fold}/model.pt",
        "metrics_url": f"runs/r/folds/vgg16-frozen/fold-{fold}/metrics.json",
    }


def test_a_sweep_scores_every_fold_but_the_tuning_fold():
    params = RetrainParams(folds=4)  # quick profile: tuning="sweep"
    assert params.tuning == "sweep" and TUNING_FOLD == 0
    assert params.scored_folds() == [1, 2, 3]
    plan = cv_plan(3, "sweep", PARTS)
    assert plan["scored_folds"] == [1, 2] and plan["tuning_fold"] == 0
    assert plan["tuning_split"] == {"fold": 0, "train": 40, "val": 20}
    assert plan["note"] == (
        "hyper-parameters chosen on fold 0 (20 images), cross-validation on folds 1..2, "
        "never re-scored"
    )


def test_without_a_sweep_every_fold_is_scored():
    assert RetrainParams(tuning="seed", folds=3).scored_folds() == [0, 1, 2]
    assert RetrainParams(profile="paper", gpus_per_fold=0).scored_folds() == [0, 1, 2, 3, 4]
    assert RetrainParams(tuning="seed", folds=2).scored_folds() == [0, 1]  # allowed: no sweep
    plan = cv_plan(2, "seed")
    assert plan["tuning_fold"] is None and plan["tuning_split"] is None


def test_two_folds_with_a_sweep_are_refused_naming_the_field():
    with pytest.raises(ValidationError) as info:
        RetrainParams(folds=2)
    (error,) = info.value.errors()
    assert "folds=2" in error["msg"] and "tuning='sweep'" in error["msg"]
    assert "at least 3" in error["msg"]
    with pytest.raises(ValueError, match="at least 3 folds"):
        cv_plan(2, "sweep")


def test_results_keep_the_plan_and_never_rank_on_the_tuning_fold():
    plan = cv_plan(3, "sweep", PARTS)
    with pytest.raises(ValueError, match=r"folds \[0\] are not scored"):
        aggregate([_record(0, 0.9), _record(1, 0.6)], plan)
    results = aggregate([_record(1, 0.6), _record(2, 0.7)], plan)
    assert results["cross_validation"] == json_safe(plan)
    assert results["models"][0]["folds"] == [1, 2]
    assert best_model(results)["fold"]["fold"] == 2
    assert "Folds: hyper-parameters chosen on fold 0 (20 images)" in to_markdown(results)
    # Results with a tuning fold in them (written by hand, or by an older run) still never
    # publish its model.
    mixed = aggregate([_record(0, 0.99), _record(1, 0.6), _record(2, 0.7)])
    mixed["cross_validation"] = plan
    assert best_model(mixed)["fold"]["fold"] == 2
