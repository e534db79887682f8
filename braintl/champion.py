"""The champion: the model in use, moved only by a candidate that is not worse, by hand, or back.

A completed run's published model is a *candidate*. It replaces the champion when, on the
candidate's held-out test set where both models are scored, it is non-inferior in AUC and does
not lose sensitivity (:func:`decide`). The champion is named by ``OUT/champion.json``; every
change is appended to ``OUT/champions.jsonl``, so ``rollback`` can return to the champion the
current one replaced. ``latest.json`` stays the last completed run's, for reports.

Why a one-sided non-inferiority bound and not "AUC went up": on a few dozen test scans two
equally good models differ by chance; requiring a higher AUC would keep an old model forever or
swap models on noise. The bound comes from the paired, clustered DeLong comparison
(:func:`braintl.uncertainty.delong_test`), which counts a source scan once however many copies
it has.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from statistics import NormalDist

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from braintl import conditional
from braintl.errors import UserError
from braintl.metrics import check_predictions, json_safe
from braintl.storage import COMPLETE_MARKER, resolve
from braintl.uncertainty import delong_test, group_members

CHAMPION = "champion.json"
HISTORY = "champions.jsonl"
METHOD = (
    "paired clustered DeLong (Obuchowski 1997) on the candidate's held-out test set; "
    "promote when the one-sided lower bound of AUC(candidate) − AUC(champion) > −auc_margin "
    "and sensitivity (each model at its own validation threshold) drops by at most "
    "sensitivity_margin"
)


class ChampionRule(BaseModel):
    """How much worse a candidate may look and still replace the champion."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    auc_margin: float = Field(0.02, ge=0, lt=1, description="AUC a candidate may lose")
    sensitivity_margin: float = Field(
        0.05, ge=0, le=1, description="sensitivity a candidate may lose"
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="level of the one-sided lower bound on the AUC difference"
    )


@dataclass(frozen=True)
class Scored:
    """One model's tumor probabilities on the comparison images, and its own threshold."""

    prob: np.ndarray
    threshold: float


def sensitivity(y: np.ndarray, scored: Scored) -> float:
    """Share of tumor images called tumor at the model's threshold (NaN without any)."""
    tumor = y == 1
    return float((scored.prob[tumor] >= scored.threshold).mean()) if tumor.any() else math.nan


def first_model() -> dict:
    """The decision when nothing was promoted yet: any completed run's model beats none."""
    return {"promote": True, "reason": "promoted: first model, no champion yet", "evidence": {}}


def decide(y_true, groups, candidate: Scored, champion: Scored | None, rule: ChampionRule) -> dict:
    """Whether ``candidate`` replaces ``champion`` on images ``y_true`` (one group id each).

    Returns ``{"promote", "reason", "evidence"}``; the reason says why in one line. No champion
    yet: the candidate is promoted. Too few groups of a class to compare: the champion is kept.
    """
    if champion is None:
        return first_model()
    y, _ = check_predictions(y_true, candidate.prob)
    check_predictions(y, champion.prob)
    sens = {"candidate": sensitivity(y, candidate), "champion": sensitivity(y, champion)}
    evidence = {
        "method": METHOD,
        "rule": rule.model_dump(),
        "n_images": len(y),
        "n_groups": int(group_members(groups, len(y)).max()) + 1 if len(y) else 0,
        "n_tumor": int((y == 1).sum()),
        "threshold": {"candidate": candidate.threshold, "champion": champion.threshold},
        "sensitivity": sens,
        "sensitivity_drop": sens["champion"] - sens["candidate"],
    }
    try:
        test = delong_test(y, candidate.prob, champion.prob, groups)
    except ValueError as exc:
        return {
            "promote": False,
            "reason": f"kept champion: cannot compare AUCs ({exc})",
            "evidence": evidence,
        }
    z = NormalDist().inv_cdf(rule.confidence)
    lower = test["diff"] - z * test["se"]
    evidence |= {
        "auc": {"candidate": test["auc_a"], "champion": test["auc_b"]},
        "auc_diff": test["diff"],
        "auc_se": test["se"],
        "auc_lower": lower,
    }
    aucs = (
        f"AUC {test['auc_a']:.3f} vs champion {test['auc_b']:.3f} (difference "
        f"{test['diff']:+.3f}, one-sided {rule.confidence:.0%} lower bound {lower:+.3f}, margin "
        f"-{rule.auc_margin:g})"
    )
    senses = f"sensitivity {sens['candidate']:.3f} vs {sens['champion']:.3f}"
    if not lower > -rule.auc_margin:
        reason = f"kept champion: AUC may be worse by more than the margin: {aucs}"
    elif not evidence["sensitivity_drop"] <= rule.sensitivity_margin:
        reason = (
            f"kept champion: {senses}, a drop of {evidence['sensitivity_drop']:.3f} > "
            f"{rule.sensitivity_margin:g}; {aucs}"
        )
    else:
        return {"promote": True, "reason": f"promoted: {aucs}; {senses}", "evidence": evidence}
    return {"promote": False, "reason": reason, "evidence": evidence}


# --- the records: champion.json and champions.jsonl -------------------------------------------


def read_champion(out_url: str) -> dict | None:
    """The current champion's record, or None when no model was ever promoted."""
    target = resolve(out_url).join(CHAMPION)
    return target.read_json() if target.exists() else None


def read_history(out_url: str) -> list[dict]:
    """Every champion record, oldest first (promotions, forced promotions, rollbacks)."""
    target = resolve(out_url).join(HISTORY)
    if not target.exists():
        return []
    return [json.loads(line) for line in target.read_bytes().decode().splitlines() if line]


class ChampionMoved(RuntimeError):
    """Another run or command moved the champion after this decision read it: nothing was
    written, and the decision must be made again against the new champion (a retry does)."""


def write_champion(out_url: str, record: dict) -> str:
    """The one write that moves the champion: ``champion.json`` to ``record``, only if it still
    holds the record ``record`` replaces (``sequence`` one lower; a conditional write, so two
    writers at once cannot both win and the champion never moves backwards), then ``record``
    appended to the history (read, append, conditional rewrite, again if another writer came
    in between). A process that dies between the two leaves the history one line short."""
    out = resolve(out_url)
    replaced = record["sequence"] - 1

    def still_replaced(current: bytes | None) -> bool:
        found = json.loads(current)["sequence"] if current else 0
        if found != replaced:
            raise ChampionMoved(
                f"{out.join(CHAMPION).url}: the champion moved to change {found} while this "
                f"decision was based on change {replaced}; nothing written, decide again"
            )
        return True

    target = out.join(CHAMPION)
    data = json.dumps(json_safe(record), indent=2, sort_keys=True).encode()
    conditional.update(target, data, still_replaced)
    line = json.dumps(json_safe(record), sort_keys=True) + "\n"
    conditional.append(out.join(HISTORY), line.encode())
    return target.url


def champion_model(out_url: str) -> str:
    """The champion's model URL, for ``braintl predict --model champion``."""
    # Shaped like braintl.publish's lookup of the latest model, on purpose: each pointer has its
    # own file and its own reason to be missing, so its own message and fix.
    current = read_champion(out_url)
    if current is None:
        raise UserError(
            f"{resolve(out_url).join(CHAMPION).url}: no champion yet (no model was promoted "
            "under this output). Use `--model latest` for the last completed run's model, or "
            "`braintl model promote RUN` to make a run's model the champion."
        )
    return current["model"]


def new_record(
    run: dict, promoted_by: str, reason: str, evidence: dict | None, current: dict | None
) -> dict:
    """A champion record for ``run`` (its ``run_id``, ``run_url``, ``model``, ``fingerprint``)
    replacing ``current``; ``sequence`` grows by one per change, so a later conditional write
    can refuse to move the champion backwards."""
    return {
        "sequence": (current or {}).get("sequence", 0) + 1,
        "run_id": run["run_id"],
        "run_url": run["run_url"],
        "model": run["model"],
        "fingerprint": run.get("fingerprint"),
        "promoted_by": promoted_by,
        "reason": reason,
        "evidence": evidence,
        "time": datetime.now(UTC).isoformat(),
        "previous": current["run_id"] if current else None,
    }


def completed_run(out_url: str, run: str) -> dict:
    """The completion record of ``run`` (a run id under ``OUT/runs/`` or a run URL), which
    names its published model; a run that did not complete or published none is refused."""
    candidates = [resolve(out_url).join("runs", run), resolve(run)]
    loc = next((c for c in candidates if c.join("config.json").exists()), candidates[0])
    if not loc.is_complete():
        raise UserError(
            f"{loc.url}: not a completed run (no completion marker). Pass the id of a run under "
            f"{resolve(out_url).join('runs').url} that finished, or its URL."
        )
    record = loc.join(COMPLETE_MARKER).read_json()
    model = record.get("model")
    if not model or not resolve(model).is_complete():
        raise UserError(f"run {record.get('run_id', run)} ({loc.url}) has no published model")
    return record


def promote(out_url: str, run: str, reason: str) -> dict:
    """Make ``run``'s model the champion by hand (recorded as ``forced``); the run's own
    challenge evidence, when it has one, is kept with it."""
    record = completed_run(out_url, run)
    current = read_champion(out_url)
    if current and current["run_id"] == record["run_id"]:
        raise UserError(f"run {record['run_id']} is the champion already")
    challenge = resolve(record["run_url"]).join("challenge.json")
    evidence = challenge.read_json()["evidence"] if challenge.exists() else None
    new = new_record(record, "forced", reason, evidence, current)
    write_champion(out_url, new)
    return new


def rollback(out_url: str, reason: str) -> dict:
    """Return to the champion the current one replaced. Rolling back again goes further back:
    the restored record takes over the ``previous`` of that champion's last record."""
    current = read_champion(out_url)
    if current is None or current.get("previous") is None:
        what = "no champion" if current is None else f"champion {current['run_id']} replaced none"
        raise UserError(f"nothing to roll back to under {resolve(out_url).url}: {what}")
    restored = next(
        r for r in reversed(read_history(out_url)) if r["run_id"] == current["previous"]
    )
    new = new_record(restored, "rollback", reason, restored.get("evidence"), current)
    new["previous"] = restored.get("previous")
    write_champion(out_url, new)
    return new
