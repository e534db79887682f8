"""The champion rule on hand-made predictions, and the champion records on real storage (a local
folder and a real S3-compatible server)."""

from __future__ import annotations

import numpy as np
import pytest
from concurrency import race

from braintl.champion import (
    ChampionMoved,
    ChampionRule,
    Scored,
    decide,
    new_record,
    read_champion,
    read_history,
    rollback,
    write_champion,
)
from braintl.errors import UserError
from braintl.metrics import json_safe

RULE = ChampionRule()
# 40 source scans (20 tumor), each with a copy: 80 test images in 40 groups.
Y_SCANS = np.repeat([1, 0], 20)


def _copies(values: np.ndarray) -> np.ndarray:
    return np.repeat(values, 2)


Y = _copies(Y_SCANS)
GROUPS = _copies(np.arange(40))


def _model(signal: float, seed: int, threshold: float = 0.5) -> Scored:
    """Probabilities that rank tumors higher the stronger ``signal`` is (0: pure noise)."""
    noise = np.random.default_rng(seed).normal(size=40)
    logits = signal * (2 * Y_SCANS - 1) + noise
    return Scored(_copies(1 / (1 + np.exp(-logits))), threshold)


CHAMPION = _model(1.0, seed=1)


def test_a_better_candidate_is_promoted():
    decision = decide(Y, GROUPS, _model(3.0, seed=2), CHAMPION, RULE)
    ev = decision["evidence"]
    assert decision["promote"] and decision["reason"].startswith("promoted: AUC")
    assert ev["auc"]["candidate"] > ev["auc"]["champion"] + 0.05
    assert ev["auc_lower"] > -RULE.auc_margin
    assert (ev["n_images"], ev["n_groups"], ev["n_tumor"]) == (80, 40, 40)


def test_a_clearly_worse_candidate_keeps_the_champion():
    decision = decide(Y, GROUPS, _model(0.0, seed=3), CHAMPION, RULE)
    ev = decision["evidence"]
    assert not decision["promote"]
    assert decision["reason"].startswith("kept champion: AUC may be worse by more than the margin")
    assert ev["auc_diff"] < -0.2 and ev["auc_lower"] < -RULE.auc_margin


def test_a_slightly_worse_candidate_within_the_margin_is_promoted():
    """One tumor scan scored a little lower: AUC drops by under the margin, with a bound that
    the paired comparison keeps tight because the two models agree elsewhere."""
    prob = CHAMPION.prob.copy()
    tumors = np.flatnonzero(Y == 1)
    weakest = tumors[np.argsort(prob[tumors])[:2]]  # the two images of the weakest tumor scan
    prob[weakest] -= 0.05
    decision = decide(Y, GROUPS, Scored(prob, CHAMPION.threshold), CHAMPION, RULE)
    ev = decision["evidence"]
    assert -RULE.auc_margin < ev["auc_lower"] <= ev["auc_diff"] < 0
    assert decision["promote"]
    strict = decide(
        Y, GROUPS, Scored(prob, CHAMPION.threshold), CHAMPION, ChampionRule(auc_margin=0)
    )
    assert not strict["promote"]


def test_a_sensitivity_drop_beyond_the_margin_keeps_the_champion():
    """Same ranking (same AUC), but a threshold that calls fewer tumors."""
    tumor_probs = np.sort(CHAMPION.prob[Y == 1])
    high = float(tumor_probs[len(tumor_probs) // 3])  # about a third of tumors fall below
    candidate = Scored(CHAMPION.prob, max(high, CHAMPION.threshold))
    decision = decide(Y, GROUPS, candidate, CHAMPION, RULE)
    ev = decision["evidence"]
    assert ev["auc_diff"] == 0 and ev["sensitivity_drop"] > RULE.sensitivity_margin
    assert not decision["promote"] and "sensitivity" in decision["reason"].split(";")[0]
    lenient = decide(Y, GROUPS, candidate, CHAMPION, ChampionRule(sensitivity_margin=1))
    assert lenient["promote"]


def test_the_first_model_is_promoted():
    decision = decide(Y, GROUPS, _model(0.0, seed=4), None, RULE)
    assert decision["promote"] and "first model" in decision["reason"]


def test_copies_do_not_narrow_the_bound():
    """Counted by source group, the 80 images are 40 cases: the same bound as the 40 scans
    alone. Counted image by image, the copies would pass for evidence."""
    candidate = _model(0.6, seed=5)
    grouped = decide(Y, GROUPS, candidate, CHAMPION, RULE)["evidence"]
    scans = decide(
        Y_SCANS,
        None,
        Scored(candidate.prob[::2], 0.5),
        Scored(CHAMPION.prob[::2], 0.5),
        RULE,
    )["evidence"]
    by_image = decide(Y, None, candidate, CHAMPION, RULE)["evidence"]
    assert grouped["auc_diff"] == pytest.approx(scans["auc_diff"])
    assert grouped["auc_se"] == pytest.approx(scans["auc_se"], rel=0.05)
    assert by_image["auc_se"] < 0.8 * grouped["auc_se"]


def test_too_few_groups_keep_the_champion():
    y, groups = np.array([1, 1, 0, 0]), np.array([0, 0, 1, 1])
    decision = decide(
        y,
        groups,
        Scored(np.array([0.9, 0.8, 0.1, 0.2]), 0.5),
        Scored(np.array([0.6, 0.4, 0.5, 0.3]), 0.5),
        RULE,
    )
    assert not decision["promote"] and "cannot compare AUCs" in decision["reason"]


def _run(run_id: str) -> dict:
    return {"run_id": run_id, "run_url": f"runs/{run_id}", "model": f"runs/{run_id}/model"}


@pytest.fixture(params=["local", "s3"])
def out_url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_bucket") + "/out"


def test_history_and_rollbacks_walk_back_the_chain(out_url):
    assert read_champion(out_url) is None and read_history(out_url) == []
    for run_id in ("a", "b", "c"):
        current = read_champion(out_url)
        write_champion(out_url, new_record(_run(run_id), "rule", f"{run_id} won", {}, current))
    assert read_champion(out_url)["run_id"] == "c"
    back = rollback(out_url, "c misbehaves")
    assert (back["run_id"], back["promoted_by"], back["reason"]) == (
        "b",
        "rollback",
        "c misbehaves",
    )
    assert read_champion(out_url) == back
    assert rollback(out_url, "b too")["run_id"] == "a"
    with pytest.raises(UserError, match="nothing to roll back to"):
        rollback(out_url, "again")
    history = read_history(out_url)
    assert [(r["run_id"], r["promoted_by"]) for r in history] == [
        ("a", "rule"),
        ("b", "rule"),
        ("c", "rule"),
        ("b", "rollback"),
        ("a", "rollback"),
    ]
    assert [r["sequence"] for r in history] == [1, 2, 3, 4, 5]
    assert [r["previous"] for r in history] == [None, "a", "b", "a", None]


def test_of_writers_deciding_against_one_champion_exactly_one_moves_it(out_url):
    """Six challengers decided against champion "a" at once: one replaces it, the others find
    it moved and write nothing (they must decide again), and the history gains one line."""
    write_champion(out_url, new_record(_run("a"), "rule", "first", {}, None))
    current = read_champion(out_url)
    records = [new_record(_run(f"c{i}"), "rule", "won", {}, current) for i in range(6)]
    outcomes = race(6, lambda i: write_champion(out_url, records[i]))
    winners = [i for i, o in enumerate(outcomes) if not isinstance(o, Exception)]
    assert len(winners) == 1, outcomes
    assert all(isinstance(o, ChampionMoved) for o in outcomes if isinstance(o, Exception))
    assert read_champion(out_url) == json_safe(records[winners[0]])
    assert [r["run_id"] for r in read_history(out_url)] == ["a", f"c{winners[0]}"]
    stale = new_record(_run("late"), "rule", "won", {}, current)  # decided before the move
    with pytest.raises(ChampionMoved, match="decide again"):
        write_champion(out_url, stale)


def test_the_rule_is_a_run_parameter_outside_the_run_key():
    """Changing a margin changes decisions, not results: no retraining for it."""
    from flows.params import RetrainParams

    strict = RetrainParams(champion={"auc_margin": 0.0, "sensitivity_margin": 0.0})
    assert strict.champion == ChampionRule(auc_margin=0.0, sensitivity_margin=0.0)
    assert strict.run_key("f") == RetrainParams().run_key("f")
    with pytest.raises(ValueError, match="auc_margin"):
        RetrainParams(champion={"auc_margin": -0.1})
