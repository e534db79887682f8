"""Grad-CAM overlays of the best model's fold ensemble (the published model; the mean of its fold
models' maps, see :func:`braintl.gradcam.ensemble_grad_cam`) on a few held-out test scans per
class, correct and wrong: where the model looked, shown as a qualitative check, not as evidence."""

from __future__ import annotations

import numpy as np
import torch

from braintl.data.tensors import TensorSet
from braintl.gradcam import ensemble_grad_cam, overlay_png
from braintl.models import create_model
from braintl.report.collect import FoldPredictions
from braintl.report.plots import data_uri

PER_CASE = 2
CLASS_NAMES = {1: "Tumor", 0: "No Tumor"}


def load_fold_model(config: dict, model_url: str, image_size: int):
    """The fold model as trained: its TrainConfig's architecture, its saved state dict."""
    options = {k: config.get(k) for k in ("head_units", "dropout") if config.get(k) is not None}
    return create_model(
        config["backbone"],
        weights=model_url,
        head=config.get("head", "paper"),
        image_size=image_size,
        **options,
    )


def pick_cases(y: np.ndarray, prob: np.ndarray, threshold: float, per_case: int) -> list[dict]:
    """Per true class, the ``per_case`` most confident correct calls and most confident
    mistakes (by distance of the probability from the threshold)."""
    called = (prob >= threshold).astype(int)
    cases = []
    for label in (1, 0):
        for correct in (True, False):
            hits = np.flatnonzero((y == label) & ((called == y) == correct))
            order = np.argsort(-np.abs(prob[hits] - threshold), kind="stable")
            for position in hits[order][:per_case]:
                cases.append(
                    {
                        "position": int(position),
                        "label": CLASS_NAMES[label],
                        "predicted": CLASS_NAMES[int(called[position])],
                        "prob": float(prob[position]),
                        "correct": correct,
                    }
                )
    return cases


def gradcam_examples(
    tensors: TensorSet,
    pred: FoldPredictions,
    config: dict,
    runs: list[dict],
    per_case: int = PER_CASE,
) -> list[dict]:
    """Overlays of the fold ensemble of ``runs`` (results.json ``runs`` records) on test scans,
    picked by the ensemble's probability and threshold; each case carries its test-set
    ``index`` and a PNG data URI ``image``."""
    cases = pick_cases(pred.y, pred.mean_prob, pred.threshold, per_case)
    if not cases:
        return []
    index = pred.index[[c["position"] for c in cases]]
    images = torch.from_numpy(np.ascontiguousarray(tensors.images[index]))
    models = [load_fold_model(config, run["model_url"], images.shape[-1]) for run in runs]
    heatmaps = ensemble_grad_cam(models, images)
    for case, i, image, heat in zip(cases, index, images, heatmaps, strict=True):
        case.pop("position")
        case["index"] = int(i)
        case["image"] = data_uri(overlay_png(image, heat))
    return cases
