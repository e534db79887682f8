"""Cross-validation records → one results document, its tables, and the ``latest`` pointer.

A record is what :func:`braintl.folds.train_fold` returns: one model's scores on its validation
fold and on the held-out test set (both at the Youden threshold chosen on validation). Per
(backbone, strategy) the folds become mean ± sample sd; the test scores of the k fold models
are summarised the same way, so the spread shows how much the result depends on the fold.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
from typing import Any

from braintl import conditional
from braintl.metrics import json_safe
from braintl.runlease import holder
from braintl.storage import Location, resolve

log = logging.getLogger(__name__)

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")
PARTS = ("val", "test")
LATEST = "latest.json"
EXTERNAL_FILE = "external.json"  # a run's external validation (braintl.external)
# What results.json keeps of each fold's record: where its model and predictions are, and how
# its training went (the report draws learning curves from the history).
FOLD_FIELDS = (
    "fold",
    "model_url",
    "metrics_url",
    "threshold",
    "best_epoch",
    "stopped_by",
    "seconds",
    "history",
)


# The fold the sweep validates on. Cross-validation does not score it once a sweep chose the
# hyper-parameters on its images: those images would rank the model that was fitted to them.
TUNING_FOLD = 0


def cv_plan(folds: int, tuning: str, parts: dict | None = None) -> dict:
    """Which folds the sweep tunes on and which cross-validation scores (results.json's
    ``cross_validation``). With a sweep (``tuning="sweep"``) fold 0 chooses the hyper-parameters
    and only folds 1..k-1 are trained and scored, so no validation image both tunes and ranks;
    without one (``"seed"``) all k folds are. ``parts`` (the tensor cache's ``meta["parts"]``)
    gives the tuning split's image counts.
    """
    if tuning == "seed":
        return {
            "tuning": "seed",
            "folds": folds,
            "tuning_fold": None,
            "tuning_split": None,
            "scored_folds": list(range(folds)),
            "note": f"no sweep: hyper-parameters are the seed's own; cross-validation on folds "
            f"0..{folds - 1}",
        }
    if folds < 3:
        raise ValueError(
            f"folds={folds}: a sweep tunes on fold {TUNING_FOLD}, which cross-validation then does "
            "not score, so at least 3 folds are needed (two scored)"
        )
    sizes = ((parts or {}).get(f"fold{TUNING_FOLD}") or {}) if parts else {}
    split = {
        "fold": TUNING_FOLD,
        "train": (sizes.get("train") or {}).get("total"),
        "val": (sizes.get("val") or {}).get("total"),
    }
    images = "" if split["val"] is None else f" ({split['val']} images)"
    return {
        "tuning": "sweep",
        "folds": folds,
        "tuning_fold": TUNING_FOLD,
        "tuning_split": split,
        "scored_folds": [k for k in range(folds) if k != TUNING_FOLD],
        "note": f"hyper-parameters chosen on fold {TUNING_FOLD}{images}, cross-validation on "
        f"folds 1..{folds - 1}, never re-scored",
    }


def fold_summary(values: list[Any]) -> dict:
    """Mean and sample sd of the defined values (undefined scores arrive as None or NaN)."""
    defined = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": statistics.fmean(defined) if defined else None,
        "sd": statistics.stdev(defined) if len(defined) > 1 else None,
        "n": len(defined),
        "values": [None if v is None or not math.isfinite(v) else float(v) for v in values],
    }


def _or_inf(value: float | None) -> float:
    return -math.inf if value is None else value


def aggregate(records: list[dict], plan: dict | None = None) -> dict:
    """Per (backbone, strategy): mean ± sd over folds of the validation and test metrics.

    Models are listed best first by mean validation AUC (the test set never ranks them).
    ``plan`` (:func:`cv_plan`) is kept as ``cross_validation``; a record of a fold it does not
    score (the sweep's tuning fold) is refused.
    """
    if plan is not None:
        unscored = sorted({r["fold"] for r in records} - set(plan["scored_folds"]))
        if unscored:
            raise ValueError(
                f"folds {unscored} are not scored in this run ({plan['note']}); "
                "their records cannot rank a model"
            )
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["backbone"], record["strategy"]), []).append(record)
    models = []
    for (backbone, strategy), group in groups.items():
        group = sorted(group, key=lambda r: r["fold"])
        model = {
            "model": f"{backbone}/{strategy}",
            "backbone": backbone,
            "strategy": strategy,
            "folds": [r["fold"] for r in group],
            "config": group[0].get("config"),
            "runs": [{k: r.get(k) for k in FOLD_FIELDS} for r in group],
        }
        for part in PARTS:
            model[part] = {
                m: fold_summary([(r.get(part) or {}).get(m) for r in group]) for m in METRICS
            }
        models.append(model)
    models.sort(key=lambda m: -_or_inf(m["val"]["auc"]["mean"]))
    document = {"metrics": list(METRICS), "models": models}
    if plan is not None:
        document["cross_validation"] = plan
    return json_safe(document)


def _percent(summary: dict) -> str:
    mean, sd = summary["mean"], summary["sd"]
    if mean is None:
        return "–"
    return f"{mean * 100:.1f}" + ("" if sd is None else f" ± {sd * 100:.1f}")


def to_csv(results: dict) -> str:
    """One row per model; ``<part>_<metric>_mean`` and ``_sd`` columns, fractions in [0, 1],
    empty (csv's None) where undefined: no defined value, or one value for an sd."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = [f"{p}_{m}_{s}" for p in PARTS for m in METRICS for s in ("mean", "sd")]
    writer.writerow(["model", "backbone", "strategy", "folds", *columns])
    for model in results["models"]:
        cells = [model[p][m][s] for p in PARTS for m in METRICS for s in ("mean", "sd")]
        writer.writerow(
            [model["model"], model["backbone"], model["strategy"], len(model["folds"]), *cells]
        )
    return buffer.getvalue()


def to_markdown(results: dict) -> str:
    """Readable table in percent, mean ± sd, validation folds then the held-out test set."""
    header = ["model", "folds"] + [f"{p} {m}" for p in PARTS for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in results["models"]:
        cells = [_percent(model[p][m]) for p in PARTS for m in METRICS]
        lines.append(f"| {model['model']} | {len(model['folds'])} | " + " | ".join(cells) + " |")
    note = "\nScores in %, mean ± sd over folds, at the Youden threshold chosen on validation.\n"
    plan = results.get("cross_validation")
    if plan:
        note += f"Folds: {plan['note']}.\n"
    return "\n".join(lines) + "\n" + note


def best_model(results: dict) -> dict:
    """The model a run stands behind: the best (backbone, strategy) by mean validation AUC, and
    of its fold models the one with the highest validation AUC (ties: the lowest fold).

    Returns the model's summary row with ``fold`` set to that fold's record from ``runs``.
    Only scored folds are candidates: never the sweep's tuning fold (``cross_validation``).
    """
    if not results["models"]:
        raise ValueError("no model in the results: nothing trained")
    model = results["models"][0]
    val_auc = dict(zip(model["folds"], model["val"]["auc"]["values"], strict=True))
    scored = (results.get("cross_validation") or {}).get("scored_folds")
    runs = [r for r in model["runs"] if scored is None or r["fold"] in scored]
    if not runs:
        raise ValueError(f"{model['model']}: none of its folds is scored ({scored})")
    fold = max(runs, key=lambda r: (_or_inf(val_auc.get(r["fold"])), -r["fold"]))
    return {**model, "fold": fold}


def write_results(run_url: str, results: dict) -> dict[str, str]:
    """Write results.json, table.csv and table.md under ``run_url``; returns name → URL.

    The run is not complete yet: its report and model follow, then :func:`complete_run`.
    """
    run = resolve(run_url)
    files = {
        "results.json": json.dumps(results, indent=2, sort_keys=True),
        "table.csv": to_csv(results),
        "table.md": to_markdown(results),
    }
    urls = {}
    for name, text in files.items():
        target = run.join(name)
        target.write_bytes(text.encode())
        urls[name] = target.url
    return urls


def complete_run(run_url: str, record: dict) -> None:
    """Mark a run complete once everything it writes is written; readers (``latest.json``,
    resumption, the report's protocol comparison) trust only complete runs."""
    resolve(run_url).mark_complete(json_safe(record))


def unfinished_run(out_url: str, run_key: str, owner: str | None = None) -> str | None:
    """The newest run of this run key that never completed, so a rerun after a crash resumes
    it (its sweep restores from ``runs/<id>/sweep/``) instead of starting a new run. A run
    leased by ``owner`` itself (a retried flow run) counts; one leased by another does not."""
    runs = resolve(out_url).join("runs")
    if not runs.exists():
        return None
    for path in sorted(runs.fs.ls(runs.path, detail=False), reverse=True):
        run = runs.join(path.rstrip("/").rsplit("/", 1)[-1])
        if (
            not run.is_complete()
            and _run_key(run) == run_key
            and holder(run) in (None, owner)  # else a run of the same settings still at work
        ):
            return path.rstrip("/").rsplit("/", 1)[-1]
    return None


def _run_key(run: Location) -> str | None:
    """The run key in ``run``'s config.json; None when there is none or it is unreadable (then
    reported and the run skipped: one bad file must not stop every later run)."""
    config = run.join("config.json")
    if not config.exists():
        return None
    try:
        return config.read_json()["run_key"]
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("%s: unreadable (%s); that run is skipped, never resumed", config.url, exc)
        return None


def publish_latest(out_url: str, record: dict) -> bool:
    """Point ``OUT/latest.json`` at a completed run, unless it names a newer one: it only moves
    forward. Call it last: readers trust what it names.

    Newer means a greater run id (ids begin with the run's start time, see
    :func:`braintl.runclaim.new_run_id`), so a run that began earlier but finished later leaves
    it alone. Read, compare and conditional write (:func:`braintl.conditional.update`): two
    runs finishing at once cannot undo each other. One whole-object write, never half-seen.
    Returns whether ``latest.json`` moved to this run.
    """
    run_id = record["run_id"]
    target = resolve(out_url).join(LATEST)

    def older(current: bytes | None) -> bool:
        named = None if current is None else _latest_run_id(target, current)
        return named is None or named < run_id

    document = json.dumps(json_safe(record), indent=2, sort_keys=True).encode()
    return conditional.update(target, document, older)


def read_latest(out_url: str) -> dict | None:
    """The last completed run's record, or None when no run has completed yet (or when
    ``latest.json`` is unreadable: reported, and the next completed run replaces it)."""
    target = resolve(out_url).join(LATEST)
    if not target.exists():
        return None
    data = target.read_bytes()
    return json.loads(data) if _latest_run_id(target, data) is not None else None


def _latest_run_id(target: Location, data: bytes) -> str | None:
    """The run id ``latest.json`` names; None, with a warning, when it names none readable."""
    try:
        run_id = json.loads(data)["run_id"]
        if isinstance(run_id, str):
            return run_id
        raise TypeError("run_id is not text")
    except (ValueError, TypeError, KeyError) as exc:
        log.warning(
            "%s: unreadable (%s); ignored, the next completed run replaces it", target.url, exc
        )
        return None
