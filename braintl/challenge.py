"""A run's challenge: its published model against the champion, on the run's held-out test set.

Both models score the candidate's test images from their files, each decoded and preprocessed
as its own package says (as ``braintl predict`` would), so a champion trained at another image
size is scored as it would be used. The champion never saw these images unless the data or the
split changed since its run; how many of them it had in its development part is counted and
shown, because such images favour the champion (the rule then errs towards keeping it).
Augmented test copies (only under the seed's leaky protocol) have no file and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from braintl import runlease
from braintl.champion import (
    ChampionRule,
    Scored,
    decide,
    first_model,
    new_record,
    read_champion,
    write_champion,
)
from braintl.data.tensors import TensorSet
from braintl.markdown import markdown_escape
from braintl.metrics import json_safe
from braintl.predict import predict
from braintl.publish import MODEL_DIR, PublishedModel, load_model
from braintl.storage import resolve

CHALLENGE_FILE = "challenge.json"
# Run documents that carry the decision too (the report is rendered before the challenge; a
# later `braintl report` takes it from challenge.json).
NOTED_IN = ("run.json", "report/report.json")


@dataclass(frozen=True)
class TestImages:
    """The candidate's held-out test images that have a file, with labels and source groups."""

    urls: list[str]
    y: np.ndarray
    groups: np.ndarray
    without_file: int


def held_out(tensors_url: str) -> TestImages:
    """The test part of the tensor set at ``tensors_url``, as files under its data URL."""
    tensors = TensorSet.load(tensors_url)
    test = tensors.split.test
    originals = test[~tensors.augmented[test]]
    root = resolve(tensors.meta["data_url"])
    urls = [root.join(tensors.meta["files"][i]).url for i in originals]
    return TestImages(
        urls, tensors.labels[originals], tensors.groups[originals], len(test) - len(originals)
    )


def challenge(run_url: str, out_url: str, rule: ChampionRule) -> dict:
    """Decide whether the model of the completed run at ``run_url`` becomes the champion under
    ``out_url``, move the champion when it does, and record the decision in the run
    (``challenge.json``, ``run.json``, ``report/report.json``). A run challenges once: asked
    again (a retried flow), it returns its recorded decision. Like every result write, moving
    the champion and recording the decision need the run's lease (:func:`runlease.confirm`):
    a run taken over by another writes neither."""
    run = resolve(run_url)
    if run.join(CHALLENGE_FILE).exists():
        return run.join(CHALLENGE_FILE).read_json()
    candidate = load_model(run.join(MODEL_DIR).url)
    info = candidate.info
    current = read_champion(out_url)
    promotion = None
    if current is not None and current["run_id"] == info["run_id"]:
        # A try that promoted this run stopped before recording it: record that promotion.
        decision = {"promote": True, "reason": current["reason"], "evidence": current["evidence"]}
        before = current["previous"]
    else:
        before = current["run_id"] if current else None
        if current is None:
            decision = first_model()
        else:
            decision = _against(candidate, load_model(current["model"]), rule)
        if decision["promote"]:
            entry = {"model": candidate.url} | {
                k: info[k] for k in ("run_id", "run_url", "fingerprint")
            }
            promotion = new_record(entry, "rule", decision["reason"], decision["evidence"], current)
    runlease.confirm(run_url)  # scoring took a while: is the run still this process's?
    if promotion is not None:
        write_champion(out_url, promotion)
    decision = json_safe(  # undefined scores (NaN) become null
        decision
        | {
            "candidate": info["run_id"],
            "champion_before": before,
            "champion": info["run_id"] if decision["promote"] else before,
            "time": datetime.now(UTC).isoformat(),
        }
    )
    run.join(CHALLENGE_FILE).write_json(decision)
    for name in NOTED_IN:
        document = run.join(name)
        if document.exists():
            document.write_json(document.read_json() | {"champion": decision})
    return decision


def _against(candidate: PublishedModel, champion: PublishedModel, rule: ChampionRule) -> dict:
    """The rule's decision on the images both models could score, with where they came from."""
    images = held_out(candidate.info["data"]["tensors_url"])
    scores = [_probabilities(model, images.urls) for model in (candidate, champion)]
    both = [i for i, url in enumerate(images.urls) if all(url in s for s in scores)]
    urls = [images.urls[i] for i in both]
    cand, champ = ([s[u] for u in urls] for s in scores)
    decision = decide(
        images.y[both],
        images.groups[both],
        Scored(np.asarray(cand), candidate.threshold),
        Scored(np.asarray(champ), champion.threshold),
        rule,
    )
    fingerprints = {
        "candidate": candidate.info["fingerprint"],
        "champion": champion.info["fingerprint"],
    }
    seen = _champion_developed_on(champion, urls)
    decision["evidence"] |= {
        "models": {"candidate": candidate.url, "champion": champion.url},
        "test_images": {
            "scored": len(urls),
            "unreadable": len(images.urls) - len(urls),
            "without_file": images.without_file,
        },
        "data": {
            "changed": fingerprints["candidate"] != fingerprints["champion"],
            "fingerprints": fingerprints,
            "champion_developed_on": seen,
        },
    }
    return decision


def _probabilities(model: PublishedModel, urls: list[str]) -> dict[str, float]:
    return {row.file: row.probability for row in predict(model, urls).rows}


def _champion_developed_on(champion: PublishedModel, urls: list[str]) -> int | None:
    """How many of ``urls`` lay in the champion's development part (training or validation),
    matched by file URL; None when the champion's tensor set is gone."""
    tensors = resolve(champion.info["data"]["tensors_url"])
    meta, split = tensors.join("meta.json"), tensors.join("split.json")
    if not (meta.exists() and split.exists()):
        return None
    files, root = meta.read_json()["files"], resolve(meta.read_json()["data_url"])
    test = set(split.read_json()["test"])
    developed = {root.join(f).url for i, f in enumerate(files) if i not in test}
    return sum(url in developed for url in urls)


def summary(decision: dict) -> dict:
    """The decision's evidence in the few numbers a notification carries (the whole record is
    in the run's challenge.json)."""
    ev = decision["evidence"]
    keys = ("auc", "auc_lower", "sensitivity", "n_images", "n_groups")
    return {k: ev[k] for k in keys if k in ev} | (
        {"data_changed": ev["data"]["changed"]} if "data" in ev else {}
    )


def to_markdown(decision: dict) -> str:
    """The decision for a Prefect artifact and a reader: the verdict, then the evidence."""
    lines = [f"# {decision['reason']}", ""]
    lines.append(
        f"Candidate run {markdown_escape(decision['candidate'])}; champion before "
        f"{markdown_escape(decision['champion_before'])}, now "
        f"{markdown_escape(decision['champion'])}."
    )
    ev = decision["evidence"]
    if not ev:
        return "\n".join(lines) + "\n"
    lines += ["", "| | candidate | champion |", "|---|---|---|"]
    for name, values in (
        ("AUC", ev.get("auc")),
        ("sensitivity", ev["sensitivity"]),
        ("threshold", ev["threshold"]),
    ):
        if values:
            lines.append(f"| {name} | {_num(values['candidate'])} | {_num(values['champion'])} |")
    if "auc_diff" in ev:
        lines += [
            "",
            f"AUC difference {ev['auc_diff']:+.4f} (se {ev['auc_se']:.4f}), one-sided "
            f"{ev['rule']['confidence']:.0%} lower bound {ev['auc_lower']:+.4f}; margin "
            f"-{ev['rule']['auc_margin']:g}. Sensitivity drop {_num(ev['sensitivity_drop'])}; "
            f"margin {ev['rule']['sensitivity_margin']:g}.",
        ]
    images, data = ev.get("test_images", {}), ev.get("data", {})
    lines += [
        "",
        f"{ev['n_images']} test images ({ev['n_tumor']} tumor) in {ev['n_groups']} source groups"
        f"; unreadable {images.get('unreadable')}, augmented copies without a file "
        f"{images.get('without_file')}.",
    ]
    if data.get("changed"):
        lines.append(
            f"The data changed since the champion's run (fingerprint "
            f"{data['fingerprints']['champion']} → {data['fingerprints']['candidate']})."
        )
    if data.get("champion_developed_on"):
        lines.append(
            f"The champion trained or validated on {data['champion_developed_on']} of these "
            "images, which favours it."
        )
    lines += ["", f"Method: {ev['method']}."]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"
