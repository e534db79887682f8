"""The published model: the fold ensemble a run stands behind, packaged to be used later.

``OUT/runs/<run_id>/model/`` (or ``braintl train``'s ``OUT/model/``) holds everything needed to
score a new scan exactly as the run's evaluation did, without the run's other files: each
member's weights (``fold<k>/backbone.safetensors`` and ``fold<k>/head.safetensors``, so a warm
start can take a backbone alone), ``model.json`` (the members, the architecture, the
preprocessing and decode limits, the label map, the ensemble's decision threshold, the training
configuration, the data fingerprint, the leakage protocol, the test scores) and a model card,
``MODEL_CARD.md``. One format for k members and for one: the model is always the members' mean
probability (:mod:`braintl.ensemble`). The completion marker is written last: readers trust only
a complete package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from braintl.champion import champion_model
from braintl.data.clinical import ClinicalConfig
from braintl.data.decode import DecodeLimits
from braintl.data.listing import DEFAULT_LABEL_MAP, POSITIVE_LABEL
from braintl.data.preprocess import PreprocessConfig
from braintl.data.tensors import TensorSet
from braintl.ensemble import (
    ensemble_threshold,
    headline,
    out_of_fold,
    out_of_fold_scores,
    test_predictions,
)
from braintl.errors import UserError
from braintl.markdown import markdown_escape
from braintl.metrics import json_safe
from braintl.models import create_model
from braintl.models.model import BrainTLModel
from braintl.models.weights import load_state_dict, read_state_dict
from braintl.report.estimands import ensemble_estimand, fold_mean_estimand
from braintl.results import LATEST, METRICS, best_model, fold_summary, read_latest
from braintl.storage import Location, resolve
from braintl.training import predict_proba
from braintl.urls import within

MODEL_DIR = "model"
PACKAGE_FILE = "model.json"
CARD_FILE = "MODEL_CARD.md"
PARTS = ("backbone", "head")  # one safetensors file each
FORMAT = "braintl-model/2"  # /1: one model at the package root, read as an ensemble of one
INTENDED_USE = "research, not a medical device"
NEGATIVE_LABEL = "no_tumor"
SINGLE_FOLD = "single fold, not cross-validated"


@dataclass(frozen=True)
class PublishedModel:
    """A loaded package: its members in eval mode and what ``model.json`` says about them."""

    url: str
    members: tuple[BrainTLModel, ...]
    info: dict

    @property
    def threshold(self) -> float:
        return float(self.info["threshold"])

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(**self.info["preprocess"])

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(**self.info["decode"])

    @property
    def clinical(self) -> ClinicalConfig:
        """DICOM windows and NIfTI slices as training read them (defaults for older models)."""
        return ClinicalConfig(**self.info.get("clinical", {}))

    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Tumor probability of uint8 N×3×S×S images preprocessed as :attr:`preprocess` says:
        the mean of the members' probabilities."""
        return np.mean([predict_proba(member, images) for member in self.members], axis=0)

    def label(self, probability: float) -> str:
        """The label at the model's threshold."""
        return label_at(probability, self.threshold)


def label_at(probability: float, threshold: float) -> str:
    """Tumor when probability >= threshold."""
    return POSITIVE_LABEL if probability >= threshold else NEGATIVE_LABEL


@dataclass(frozen=True)
class Member:
    """One fold model going into a package: its weights and its own record (fold, its own
    validation threshold and AUC, best epoch, where it was trained)."""

    state: dict[str, torch.Tensor]
    record: dict

    @property
    def folder(self) -> str:
        return f"fold{self.record['fold']}"


def members_of(info: dict) -> list[dict]:
    """The members ``model.json`` lists; a format-1 package (one model at its root, from before
    ensembles were published) is an ensemble of one."""
    if "members" in info:
        return info["members"]
    return [{"fold": info["fold"], "folder": "", "threshold": info["threshold"], "val_auc": None}]


def weights_url(model_url: str, member: dict, part: str = "backbone") -> str:
    """URL of one weights file of a package member; ``backbone`` is what a warm start loads."""
    target = resolve(model_url)
    folder = target.join(member["folder"]) if member["folder"] else target
    return folder.join(f"{part}.safetensors").url


def publish_model(run_url: str) -> dict[str, str]:
    """Package the fold ensemble of the run's best configuration under ``run_url/model/``.

    The best configuration is the one with the highest mean validation AUC; its members are its
    scored fold models (never the sweep's tuning fold). Reads the run's config.json,
    results.json and each fold's metrics.json and model.pt. Returns ``{"model": package URL,
    "card": card URL}``.
    """
    run = resolve(run_url)
    config = run.join("config.json").read_json()
    results = run.join("results.json").read_json()
    best = best_model(results)
    results_url = run.join("results.json").url
    for fold in best["runs"]:  # folds of this output's runs (one may be reused)
        for key in ("metrics_url", "model_url"):
            within(fold[key], run.parent.parent.url, results_url)
    evaluations = [resolve(r["metrics_url"]).read_json() for r in best["runs"]]
    members = [
        Member(read_state_dict(r["model_url"]), _member_record(r, m))
        for r, m in zip(best["runs"], evaluations, strict=True)
    ]
    info = package_info(
        {
            "run_id": config["run_id"],
            "run_url": run.url,
            "model": best["model"],
            "cross_validation": results.get("cross_validation"),
            "single_fold": False,
        },
        config["data"],
        evaluations,
        members,
    )
    return write_package(run.join(MODEL_DIR), info, members)


def _member_record(run: dict, metrics: dict) -> dict:
    return {
        "fold": run["fold"],
        "threshold": run["threshold"],
        "val_auc": metrics["evaluation"]["val"]["at_youden"]["auc"],
        "best_epoch": run.get("best_epoch"),
        "source": {"model_url": run["model_url"], "metrics_url": run["metrics_url"]},
    }


def package_info(origin: dict, data: dict, evaluations: list[dict], members: list[Member]) -> dict:
    """``model.json`` of the ensemble of ``members`` (one metrics.json in ``evaluations`` each).

    ``origin``: ``run_id``, ``run_url``, ``model`` (backbone/strategy), ``cross_validation``
    (results.json's) and ``single_fold`` (True for ``braintl train``); ``data``: the run's
    ``config.json`` ``data`` (``tensors_url``, ``fingerprint``, ``meta``). The threshold is
    chosen on the out-of-fold validation predictions; the test scores are the ensemble's with
    group-bootstrap intervals, the fold models' mean ± sd beside them.
    """
    tensors = TensorSet.load(data["tensors_url"])
    predictions = [m["evaluation"]["predictions"] for m in evaluations]
    threshold = ensemble_threshold(tensors.labels, predictions)
    index, groups, probs = test_predictions(predictions, tensors.groups)
    train_config = evaluations[0]["config"]
    data_config = data["meta"]["config"]
    model = _build(train_config, data_config["preprocess"]["image_size"])
    k = len(members)
    spread = {
        f"folds_{part}": {
            m: fold_summary([(s or {}).get(m) for s in _at_youden(evaluations, part)])
            for m in METRICS
        }
        for part in ("val", "test")
    }
    return json_safe(
        {
            "format": FORMAT,
            **origin,
            "published": datetime.now(UTC).isoformat(),
            "backbone": train_config["backbone"],
            "strategy": train_config["strategy"],
            "architecture": model.config,
            "train_config": train_config,
            "members": [m.record | {"folder": m.folder} for m in members],
            "estimand": ensemble_estimand(k),
            "threshold": threshold,
            "threshold_rule": "Youden's J on the out-of-fold validation predictions "
            f"({len(out_of_fold(predictions)[0])} images, each scored by the fold model that "
            "did not train on it); tumor when the members' mean probability >= threshold",
            "preprocess": data_config["preprocess"],
            "decode": {
                k: data_config[k]
                for k in ("min_side", "max_pixels", "max_bytes")
                if k in data_config
            },
            "clinical": data_config.get("clinical", {}),
            "labels": {"1": POSITIVE_LABEL, "0": NEGATIVE_LABEL},
            "label_map": data_config.get("label_map", DEFAULT_LABEL_MAP),
            "fingerprint": data["fingerprint"],
            "data": {k: data["meta"].get(k) for k in ("data_url", "n", "originals", "augmented")}
            | {"tensors_url": data["tensors_url"], "parts": data["meta"].get("parts")},
            "protocol": {
                "name": data["meta"].get("protocol", data_config["protocol"]),
                "leaky": data["meta"].get("leaky"),
                "leakage": data["meta"].get("leakage"),
                "folds": data_config["folds"],
                "test_fraction": data_config["test_fraction"],
                "seed": data_config["seed"],
            },
            "metrics": {
                "test": headline(tensors.labels[index], probs.mean(axis=0), threshold, groups)
                if len(index)
                else None,
                "test_groups": len(np.unique(groups)),
                "test_images": len(index),
                "val_out_of_fold": out_of_fold_scores(tensors.labels, predictions, threshold),
                "spread_estimand": fold_mean_estimand(k),
                **spread,
            },
        }
    )


def _at_youden(evaluations: list[dict], part: str) -> list[dict | None]:
    return [(m["evaluation"][part] or {}).get("at_youden") for m in evaluations]


def write_package(target: Location, info: dict, members: list[Member]) -> dict[str, str]:
    """Write the members' weights, ``model.json``, the card, then the completion marker, into
    an emptied ``target``: an earlier package there (its marker, other members) is gone first."""
    if target.exists():
        target.fs.rm(target.path, recursive=True)
    for member in members:
        folder = target.join(member.folder)
        for part in PARTS:
            prefix = f"{part}."
            tensors = {
                k.removeprefix(prefix): v.contiguous()
                for k, v in member.state.items()
                if k.startswith(prefix)
            }
            folder.join(f"{part}.safetensors").write_bytes(safetensors_bytes(tensors))
    target.join(PACKAGE_FILE).write_json(info)
    card = target.join(CARD_FILE)
    card.write_bytes(model_card(info).encode())
    target.mark_complete({"run_id": info["run_id"], "model": info["model"]})
    return {"model": target.url, "card": card.url}


def _build(train_config: dict, image_size: int) -> BrainTLModel:
    """The network as training built it (see braintl.training.loop), with random weights."""
    options = {k: train_config.get(k) for k in ("head_units", "dropout")}
    return create_model(
        train_config["backbone"],
        head=train_config.get("head", "paper"),
        image_size=image_size,
        **{k: v for k, v in options.items() if v is not None},
    )


def load_model(model_url: str) -> PublishedModel:
    """Load a complete package written by :func:`write_package` (any storage URL)."""
    target = resolve(model_url)
    if not published(target):
        raise UserError(
            f"{target.url}: no complete published model here (expected {PACKAGE_FILE} and "
            f"{target.join('_COMPLETE.json').url}). Pass a model folder written by a completed "
            "run (OUT/runs/<run_id>/model) or by `braintl train --out OUT` (OUT/model), a run "
            "URL, or 'latest'."
        )
    info = target.join(PACKAGE_FILE).read_json()
    arch = info["architecture"]
    members = []
    for member in members_of(info):
        model = create_model(
            arch["name"],
            head=arch["head"],
            head_units=arch["head_units"],
            dropout=arch["dropout"],
            image_size=arch["image_size"],
        )
        state = {}
        for part in PARTS:
            url = weights_url(target.url, member, part)
            state |= {f"{part}.{k}": v for k, v in read_state_dict(url).items()}
        load_state_dict(model, state, target.url)
        members.append(model.eval())
    return PublishedModel(target.url, tuple(members), info)


def resolve_model_url(spec: str, runs_url: str) -> str:
    """A model spec → the URL of a published model.

    ``champion``: the model that ``runs_url/champion.json`` names (see :mod:`braintl.champion`);
    ``latest``: the model that ``runs_url/latest.json`` names; a run URL (``.../runs/<id>``):
    its ``model/``; an output root holding ``latest.json``: its latest model; anything else
    must be a package folder itself.
    """
    if spec == "champion":
        return champion_model(runs_url)
    if spec == "latest":
        return _latest_model(runs_url)
    location = resolve(spec)
    if location.join(PACKAGE_FILE).exists():
        return location.url
    if location.join(MODEL_DIR, PACKAGE_FILE).exists():
        return location.join(MODEL_DIR).url
    if location.join("latest.json").exists():
        return _latest_model(location.url)
    raise UserError(
        f"--model {spec!r}: neither a published model ({PACKAGE_FILE}), a run with a model/ "
        "folder, nor an output folder with latest.json. Pass 'champion' (the default) or "
        "'latest' (with --runs OUT), a run URL (OUT/runs/<run_id>) or a model URL "
        "(OUT/runs/<run_id>/model)."
    )


def _latest_model(out_url: str) -> str:
    latest = read_latest(out_url)
    if latest is None:
        raise UserError(
            f"{resolve(out_url).join('latest.json').url}: no completed run yet, so there is "
            "no latest model. Run `braintl run --out OUT` first, or pass --runs with the "
            "output folder of your runs."
        )
    if not latest.get("model"):
        raise UserError(
            f"run {latest['run_id']} (latest under {resolve(out_url).url}) published no "
            "model: it predates model publishing. Run `braintl run --force` to publish one, "
            "or pass a model URL."
        )
    return within(latest["model"], out_url, resolve(out_url).join(LATEST).url)


def warm_start(weights: str, out_url: str) -> dict | None:
    """Resolve the retrain flow's ``weights`` when it names a published model.

    ``previous``: the model of the last completed run under ``out_url``; a package URL: that
    model. A warm start trains one backbone, so it takes the member with the highest validation
    AUC (its own fold's). Returns ``{"backbone": ..., "weights": backbone weights URL, "model":
    package URL}``, or None for ``imagenet``, ``none`` and plain state-dict URLs (used as they
    are).
    """
    if weights in ("imagenet", "none"):
        return None
    if weights == "previous":
        latest = read_latest(out_url)
        if latest is None or not latest.get("model"):
            where = resolve(out_url).join("latest.json").url
            raise UserError(
                f"weights='previous': no previous published model ({where} "
                f"{'names no model' if latest else 'does not exist'}). Run once with "
                "weights 'none' or 'imagenet' first, or pass the URL of a published model."
            )
        model_url = within(latest["model"], out_url, resolve(out_url).join(LATEST).url)
    elif resolve(weights).join(PACKAGE_FILE).exists():
        model_url = resolve(weights).url
    else:
        return None
    info = resolve(model_url).join(PACKAGE_FILE).read_json()
    member = max(members_of(info), key=lambda m: _or_minus_inf(m.get("val_auc")))
    return {
        "backbone": info["backbone"],
        "weights": weights_url(model_url, member),
        "model": model_url,
    }


def _or_minus_inf(value: float | None) -> float:
    return -math.inf if value is None else value


def model_card(info: dict) -> str:
    """The model card, every field from the package's ``model.json`` (see :func:`package_info`)."""
    train = info["train_config"]
    arch = info["architecture"]
    data = info["data"]
    protocol = info["protocol"]
    metrics = info["metrics"]
    pre = info["preprocess"]
    members = info["members"]
    test_part = (data.get("parts") or {}).get("test", {})
    if info["single_fold"]:
        what = (
            f"one model trained by `braintl train` on fold {members[0]['fold']} "
            f"({SINGLE_FOLD}); best epoch {members[0]['best_epoch']}"
        )
    else:
        what = (
            f"the fold ensemble of the best configuration, chosen by mean validation AUC: "
            f"{len(members)} fold models (folds "
            f"{', '.join(str(m['fold']) for m in members)}), their mean probability"
        )
    lines = [
        f"# Model card: {info['model']} from run {info['run_id']}",
        "",
        f"Published {info['published']} from {markdown_escape(info['run_url'])}: {what}.",
        "",
        "## Intended use",
        "",
        f"Intended use: **{INTENDED_USE}**. It sorts 2D brain MRI slices into tumor / no tumor "
        "for experiments on transfer learning. It must not be used to diagnose, screen or "
        "treat anyone.",
        "",
        "## Model",
        "",
        f"- Backbone: `{arch['name']}`, strategy `{info['strategy']}`, starting weights "
        f"`{train['weights']}`",
        f"- Head: `{arch['head']}` ({arch['head_units']} units, dropout "
        f"{', '.join(f'{d:g}' for d in _listed(arch['dropout']))})",
        f"- Training: {train['epochs']} epochs, batch size {train['batch_size']}, learning rate "
        f"{train['lr']:g}, backbone learning-rate factor {train['backbone_lr_factor']:g}, "
        f"weight decay {train['weight_decay']:g}, seed {train['seed']}",
        f"- Decision threshold: {info['threshold']:.4f} ({info['threshold_rule']})",
        f"- Labels: {info['labels']['1']} (1), {info['labels']['0']} (0); label folders "
        + ", ".join(f"{markdown_escape(k)} → {v}" for k, v in sorted(info["label_map"].items())),
        f"- Input: RGB, {'cropped to the brain, ' if pre['crop'] else ''}padded to a square "
        f"with black and resized to {pre['image_size']} px (bicubic); images under "
        f"{info['decode']['min_side']} px a side are refused",
        "",
        "## Data",
        "",
        f"- Source: {markdown_escape(data['data_url'])}, fingerprint `{info['fingerprint']}`",
        f"- {data['originals']} usable scans, {data['augmented']} augmented copies; held-out "
        f"test part: {_counts(test_part)}",
        "",
        "## Evaluation protocol and leakage",
        "",
        f"- Protocol `{protocol['name']}`: {_protocol_text(protocol)}",
        f"- {protocol['folds']} cross-validation folds, test fraction {protocol['test_fraction']}, "
        f"seed {protocol['seed']}; source groups in more than one part: {protocol['leakage']}",
        *(
            [f"- Folds: {info['cross_validation']['note']}"]
            if info["cross_validation"]
            else [f"- {SINGLE_FOLD}: the scores come from one model and one validation fold"]
            if info["single_fold"]
            else []
        ),
        "",
        "## Metrics",
        "",
        _headline_text(info),
        "",
        f"| metric | held-out test, this model [95% CI] | validation, out-of-fold | "
        f"{metrics['spread_estimand']}: validation (mean ± sd) | test (mean ± sd) |",
        "|---|---|---|---|---|",
    ]
    test = metrics["test"] or {}
    for metric in METRICS:
        lines.append(
            f"| {metric} | {_interval(test.get(metric))} | "
            f"{_pct(metrics['val_out_of_fold'].get(metric))} | "
            f"{_mean_sd(metrics['folds_val'][metric])} | "
            f"{_mean_sd(metrics['folds_test'][metric])} |"
        )
    lines += external_lines(info.get("external"))
    lines += ["", "## Limitations", ""]
    lines += [f"- {item}" for item in _limitations(info)]
    return "\n".join(lines) + "\n"


def _headline_text(info: dict) -> str:
    metrics = info["metrics"]
    if not metrics["test"]:
        return "No held-out test images: this model has no test score."
    resamples = metrics["test"]["auc"].get("resamples", "n/a")
    return (
        f"The headline figure is this model's: {info['estimand']}, on the held-out test set "
        f"({metrics['test_images']} images in {metrics['test_groups']} source groups), with 95 % "
        f"group-bootstrap intervals ({resamples} resamples; a scan and its copies are one case). "
        "The fold models' mean ± sd shows how much the result depends on the fold. The "
        "out-of-fold validation scores are those the threshold was chosen on (optimistic)."
    )


def _listed(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _counts(part: dict) -> str:
    if not part:
        return "not recorded"
    return f"{part['total']} scans ({part['tumor']} tumor, {part['no_tumor']} no tumor)"


def _protocol_text(protocol: dict) -> str:
    if protocol["leaky"]:
        return (
            "the seed's protocol, a random split over images after augmentation: copies of one "
            "scan can sit in training and evaluation, so these scores are optimistic (leaky)"
        )
    return (
        "whole source groups (exact and near-duplicate copies of one scan) go to one part; "
        "test and validation hold no augmented copies (leak-free)"
    )


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "undefined"
    return f"{100 * value:.1f} %"


def _interval(score: dict | None) -> str:
    if not score or score.get("estimate") is None:
        return "undefined"
    return f"{_pct(score['estimate'])} [{_pct(score['low'])}, {_pct(score['high'])}]"


def _mean_sd(summary: dict) -> str:
    if summary.get("mean") is None:
        return "undefined"
    sd = summary.get("sd")
    return _pct(summary["mean"]) + ("" if sd is None else f" ± {100 * sd:.1f}")


def note_external(model_url: str, external: dict) -> str:
    """Add the external validation (``braintl.external.summary``) to the package's
    ``model.json`` and card, which :func:`publish_model` wrote before the model could be
    scored; returns the card's URL."""
    target = resolve(model_url)
    info = target.join(PACKAGE_FILE).read_json() | {"external": external}
    target.join(PACKAGE_FILE).write_json(info)
    card = target.join(CARD_FILE)
    card.write_bytes(model_card(info).encode())
    return card.url


def external_lines(external: dict | None) -> list[str]:
    """The card's External validation section (Markdown lines; none without external sets)."""
    if not external:
        return []
    lines = [
        "",
        "## External validation",
        "",
        f"This model at its threshold {external['threshold']:.4f} (chosen on validation; "
        "nothing tuned on these sets) on scans from other sources, copies of the development "
        "scans removed first; 95 % group-bootstrap intervals. The internal test row is the "
        "same model on its run's held-out test scans.",
        "",
        "| set | scans (groups) | copies removed | AUC | sensitivity | specificity |",
        "|---|---|---|---|---|---|",
    ]
    for row in [external["internal"], *external["sources"]]:
        name = markdown_escape(row["name"]) + (
            f" ({markdown_escape(row['url'])})" if row.get("url") else ""
        )
        figures = [_interval(row.get(k)) for k in ("auc", "sensitivity", "specificity")]
        copies = "–" if row.get("copies_removed") is None else row["copies_removed"]
        lines.append(
            f"| {name} | {row['n']} ({row['groups']}) | {copies} | " + " | ".join(figures) + " |"
        )
    return lines


def _limitations(info: dict) -> list[str]:
    data = info["data"]
    external = info.get("external") or {}
    where = (
        f"been validated on {len(external['sources'])} other source(s) only (External "
        "validation, above)"
        if external
        else "not been validated on other scanners, sequences, sites or populations"
    )
    items = [
        f"Trained on {data['originals']} scans from one source "
        f"({markdown_escape(data['data_url'])}): it has "
        f"{where}.",
        "2D slices only, one label per image; it does not localise tumors or tell their types.",
        f"The threshold {info['threshold']:.4f} was chosen on "
        f"{info['metrics']['val_out_of_fold']['n']} validation images; probabilities are not "
        "calibrated for other data.",
    ]
    if info["single_fold"]:
        items.append(
            f"{SINGLE_FOLD.capitalize()}: one training split, so the scores carry that split's "
            "luck; `braintl run` publishes a fold ensemble with its spread."
        )
    if "phantoms" in str(data["data_url"]):
        items.append("The training data are synthetic phantoms: scores say nothing about scans.")
    if info["protocol"]["leaky"]:
        items.append("The leaky protocol inflates every score on this card.")
    return items


def published(location: Location) -> bool:
    """True when a complete package lies at ``location``."""
    return location.join(PACKAGE_FILE).exists() and location.is_complete()
