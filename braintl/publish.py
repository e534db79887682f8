"""The published model: the one model a run stands behind, packaged so it can be used later.

``OUT/runs/<run_id>/model/`` holds everything needed to score a new scan exactly as the run's
evaluation did, without the run's other files: the weights (``backbone.safetensors`` and
``head.safetensors``, so a warm start can take the backbone alone), ``model.json`` (the
architecture, the preprocessing and decode limits, the label map, the decision threshold chosen
on validation, the training configuration, the data fingerprint, the leakage protocol) and a
model card, ``MODEL_CARD.md``. The completion marker is written last: readers trust only a
complete package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from safetensors.torch import save as safetensors_bytes

from braintl.champion import champion_model
from braintl.data.decode import DecodeLimits
from braintl.data.listing import DEFAULT_LABEL_MAP, POSITIVE_LABEL
from braintl.data.preprocess import PreprocessConfig
from braintl.errors import UserError
from braintl.metrics import json_safe
from braintl.models import create_model
from braintl.models.model import BrainTLModel
from braintl.models.weights import load_state_dict, read_state_dict
from braintl.results import METRICS, best_model, read_latest
from braintl.storage import Location, resolve

MODEL_DIR = "model"
PACKAGE_FILE = "model.json"
CARD_FILE = "MODEL_CARD.md"
PARTS = ("backbone", "head")  # one safetensors file each
FORMAT = "braintl-model/1"
INTENDED_USE = "research, not a medical device"
NEGATIVE_LABEL = "no_tumor"


@dataclass(frozen=True)
class PublishedModel:
    """A loaded package: the network in eval mode and what ``model.json`` says about it."""

    url: str
    model: BrainTLModel
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

    def label(self, probability: float) -> str:
        """The label at the model's threshold (tumor when probability >= threshold)."""
        return POSITIVE_LABEL if probability >= self.threshold else NEGATIVE_LABEL


def weights_url(model_url: str, part: str = "backbone") -> str:
    """URL of one weights file of a package; ``backbone`` is what a warm start loads."""
    return resolve(model_url).join(f"{part}.safetensors").url


def publish_model(run_url: str) -> dict[str, str]:
    """Package the best model of the run at ``run_url`` under ``run_url/model/``.

    Reads the run's config.json, results.json, the chosen fold's metrics.json and model.pt,
    and report/report.json when the report exists (for the intervals on the card). Returns
    ``{"model": package URL, "card": card URL}``.
    """
    run = resolve(run_url)
    config = run.join("config.json").read_json()
    results = run.join("results.json").read_json()
    best = best_model(results)
    fold = best["fold"]
    metrics = resolve(fold["metrics_url"]).read_json()
    report_loc = run.join("report", "report.json")
    report = report_loc.read_json() if report_loc.exists() else None
    data = config["data"]
    data_config = data["meta"]["config"]
    model = _build(metrics["config"], data_config["preprocess"]["image_size"])
    load_state_dict(model, read_state_dict(fold["model_url"]), fold["model_url"])
    info = json_safe(
        {
            "format": FORMAT,
            "run_id": config["run_id"],
            "run_url": run.url,
            "published": datetime.now(UTC).isoformat(),
            "model": best["model"],
            "backbone": best["backbone"],
            "strategy": best["strategy"],
            "architecture": model.config,
            "train_config": metrics["config"],
            "fold": fold["fold"],
            "best_epoch": fold.get("best_epoch"),
            "source": {"model_url": fold["model_url"], "metrics_url": fold["metrics_url"]},
            "threshold": fold["threshold"],
            "threshold_rule": "Youden's J on the fold's validation images; tumor when "
            "probability >= threshold",
            "preprocess": data_config["preprocess"],
            "decode": {
                k: data_config[k]
                for k in ("min_side", "max_pixels", "max_bytes")
                if k in data_config
            },
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
                "cross_validation": results.get("cross_validation"),
                "test_fraction": data_config["test_fraction"],
                "seed": data_config["seed"],
            },
            "metrics": {
                "fold_val": metrics["evaluation"]["val"]["at_youden"],
                "fold_test": (metrics["evaluation"].get("test") or {}).get("at_youden"),
                "cv_val": best["val"],
                "cv_test": best["test"],
                "intervals": _intervals(report, best["model"]),
            },
        }
    )
    target = run.join(MODEL_DIR)
    state = model.state_dict()
    for part in PARTS:
        prefix = f"{part}."
        tensors = {
            k.removeprefix(prefix): v.contiguous() for k, v in state.items() if k.startswith(prefix)
        }
        target.join(f"{part}.safetensors").write_bytes(safetensors_bytes(tensors))
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


def _intervals(report: dict | None, model: str) -> dict | None:
    """This model's test bootstrap intervals and the summary from the run's report (its
    ``models`` entries name their ``model``); None without a report."""
    if report is None:
        return None
    found = next((e for e in report.get("models", []) if e.get("model") == model), {})
    return {"summary": report.get("summary"), "test_bootstrap": found.get("test_bootstrap")}


def load_model(model_url: str) -> PublishedModel:
    """Load a complete package written by :func:`publish_model` (any storage URL)."""
    target = resolve(model_url)
    if not published(target):
        raise UserError(
            f"{target.url}: no complete published model here (expected {PACKAGE_FILE} and "
            f"{target.join('_COMPLETE.json').url}). Pass a model folder written by a completed "
            "run (OUT/runs/<run_id>/model), a run URL, or 'latest'."
        )
    info = target.join(PACKAGE_FILE).read_json()
    arch = info["architecture"]
    model = create_model(
        arch["name"],
        head=arch["head"],
        head_units=arch["head_units"],
        dropout=arch["dropout"],
        image_size=arch["image_size"],
    )
    state = {}
    for part in PARTS:
        url = weights_url(target.url, part)
        state |= {f"{part}.{k}": v for k, v in read_state_dict(url).items()}
    load_state_dict(model, state, target.url)
    return PublishedModel(target.url, model.eval(), info)


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
    return latest["model"]


def warm_start(weights: str, out_url: str) -> dict | None:
    """Resolve the retrain flow's ``weights`` when it names a published model.

    ``previous``: the model of the last completed run under ``out_url``; a package URL: that
    model. Returns ``{"backbone": ..., "weights": backbone weights URL, "model": package URL}``,
    or None for ``imagenet``, ``none`` and plain state-dict URLs (used as they are).
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
        model_url = latest["model"]
    elif resolve(weights).join(PACKAGE_FILE).exists():
        model_url = resolve(weights).url
    else:
        return None
    info = resolve(model_url).join(PACKAGE_FILE).read_json()
    return {"backbone": info["backbone"], "weights": weights_url(model_url), "model": model_url}


def model_card(info: dict) -> str:
    """The model card, every field from the run (see :func:`publish_model` for ``info``)."""
    train = info["train_config"]
    arch = info["architecture"]
    data = info["data"]
    protocol = info["protocol"]
    metrics = info["metrics"]
    pre = info["preprocess"]
    parts = data.get("parts") or {}
    test_part = parts.get("test", {})
    lines = [
        f"# Model card: {info['model']} from run {info['run_id']}",
        "",
        f"Published {info['published']} from `{info['run_url']}` (fold {info['fold']} of the "
        f"best configuration, chosen by mean validation AUC; best epoch {info['best_epoch']}).",
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
        + ", ".join(f"`{k}` → {v}" for k, v in sorted(info["label_map"].items())),
        f"- Input: RGB, {'cropped to the brain, ' if pre['crop'] else ''}padded to a square "
        f"with black and resized to {pre['image_size']} px (bicubic); images under "
        f"{info['decode']['min_side']} px a side are refused",
        "",
        "## Data",
        "",
        f"- Source: `{data['data_url']}`, fingerprint `{info['fingerprint']}`",
        f"- {data['originals']} usable scans, {data['augmented']} augmented copies; held-out "
        f"test part: {_counts(test_part)}",
        "",
        "## Evaluation protocol and leakage",
        "",
        f"- Protocol `{protocol['name']}`: {_protocol_text(protocol)}",
        f"- {protocol['folds']} cross-validation folds, test fraction {protocol['test_fraction']}, "
        f"seed {protocol['seed']}; source groups in more than one part: {protocol['leakage']}",
        *(
            [f"- Folds: {protocol['cross_validation']['note']}"]
            if protocol.get("cross_validation")
            else []
        ),
        "",
        "## Metrics",
        "",
        "Threshold-dependent scores at each fold's Youden threshold; AUC is threshold-free.",
        "",
        "| metric | this model, validation fold | this model, test | all folds, validation "
        "(mean ± sd) | all folds, test (mean ± sd) |",
        "|---|---|---|---|---|",
    ]
    for metric in METRICS:
        lines.append(
            f"| {metric} | {_pct((metrics['fold_val'] or {}).get(metric))} | "
            f"{_pct((metrics['fold_test'] or {}).get(metric))} | "
            f"{_mean_sd(metrics['cv_val'][metric])} | {_mean_sd(metrics['cv_test'][metric])} |"
        )
    lines += ["", _intervals_text(metrics["intervals"]), "", "## Limitations", ""]
    lines += [f"- {item}" for item in _limitations(info)]
    return "\n".join(lines) + "\n"


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


def _mean_sd(summary: dict) -> str:
    if summary.get("mean") is None:
        return "undefined"
    sd = summary.get("sd")
    return _pct(summary["mean"]) + ("" if sd is None else f" ± {100 * sd:.1f}")


def _intervals_text(intervals: dict | None) -> str:
    if not intervals or not intervals.get("test_bootstrap"):
        return (
            "Confidence intervals: missing. This run has no report with bootstrap intervals "
            "(report/report.json); the scores above are point estimates over few images."
        )
    rows = [
        "Test-set 95 % bootstrap intervals of this configuration (its fold models' mean, from "
        "the run's report):",
        "",
    ]
    for metric, value in intervals["test_bootstrap"].items():
        if isinstance(value, dict) and value.get("estimate") is not None:
            rows.append(
                f"- {metric}: {_pct(value['estimate'])} "
                f"[{_pct(value['low'])}, {_pct(value['high'])}] "
                f"({value.get('resamples', 'n/a')} resamples)"
            )
    summary = intervals.get("summary") or {}
    if summary.get("text"):
        rows += ["", f"Report summary: {summary['text']}"]
    return "\n".join(rows)


def _limitations(info: dict) -> list[str]:
    data = info["data"]
    fold = (data.get("parts") or {}).get(f"fold{info['fold']}", {})
    items = [
        f"Trained on {data['originals']} scans from one source (`{data['data_url']}`): it has "
        "not been validated on other scanners, sequences, sites or populations.",
        "2D slices only, one label per image; it does not localise tumors or tell their types.",
        f"The threshold {info['threshold']:.4f} was chosen on "
        f"{fold.get('val', {}).get('total', 'the')} validation images of one fold; "
        "probabilities are not calibrated for other data.",
    ]
    if "phantoms" in str(data["data_url"]):
        items.append("The training data are synthetic phantoms: scores say nothing about scans.")
    if info["protocol"]["leaky"]:
        items.append("The leaky protocol inflates every score on this card.")
    return items


def published(location: Location) -> bool:
    """True when a complete package lies at ``location``."""
    return location.join(PACKAGE_FILE).exists() and location.is_complete()
