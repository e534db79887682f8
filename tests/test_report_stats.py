"""Bootstrap intervals, DeLong's test and Grad-CAM: the numbers and pictures the report shows."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from braintl.gradcam import grad_cam, overlay_png
from braintl.metrics import evaluate
from braintl.uncertainty import BOOTSTRAP_METRICS, bootstrap_metrics, delong_test


def _scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    prob = 0.3 + 0.2 * y + 0.5 * rng.random((3, n))
    return y, prob


def test_bootstrap_estimate_is_the_fold_mean_and_lies_in_its_interval():
    y, prob = _scores(80)
    thresholds = [0.5, 0.45, 0.55]
    out = bootstrap_metrics(y, prob, thresholds, resamples=1000, seed=3)
    for name in BOOTSTRAP_METRICS:
        per_fold = [evaluate(y, p, t) for p, t in zip(prob, thresholds, strict=True)]
        expected = np.mean([getattr(fold, name) for fold in per_fold])
        assert out[name]["estimate"] == pytest.approx(expected)
        assert out[name]["low"] <= out[name]["estimate"] <= out[name]["high"]
        assert out[name]["low"] < out[name]["high"]
        assert out[name]["resamples"] == 1000


def test_bootstrap_narrows_as_the_test_set_grows_and_is_seeded():
    small, large = (bootstrap_metrics(*_scores(n), [0.6] * 3, seed=1) for n in (40, 640))
    for name in BOOTSTRAP_METRICS:
        assert large[name]["high"] - large[name]["low"] < 0.6 * (
            small[name]["high"] - small[name]["low"]
        )
    assert bootstrap_metrics(*_scores(40), [0.6] * 3, seed=1) == small


def test_bootstrap_rejects_mismatched_thresholds():
    y, prob = _scores(10)
    with pytest.raises(ValueError, match="one threshold per model"):
        bootstrap_metrics(y, prob, [0.5])


def test_delong_matches_the_structural_components_by_hand():
    # Positives a: .9 .8 .4, negatives .5 .1 → V10 = (1, 1, ½), V01 = (⅔, 1), AUC ⅚.
    # Positives b: .7 .3 .6, negatives .6 .2 → V10 = (1, ½, ¾), V01 = (½, 1), AUC ¾ (a tie).
    # S10: var a 1/12, var b 1/16, cov 0; S01: 1/18, 1/8, cov 1/12.
    # var(diff) = (1/12 + 1/16)/3 + (1/18 + 1/8 − 2/12)/2 = 1/18; z = (1/12)·√18; p = erfc(¼).
    y = [1, 1, 1, 0, 0]
    out = delong_test(y, [0.9, 0.8, 0.4, 0.5, 0.1], [0.7, 0.3, 0.6, 0.6, 0.2])
    assert out["auc_a"] == pytest.approx(5 / 6)
    assert out["auc_b"] == pytest.approx(3 / 4)
    assert out["se"] == pytest.approx(math.sqrt(1 / 18))
    assert out["z"] == pytest.approx(math.sqrt(18) / 12)
    assert out["p"] == pytest.approx(math.erfc(0.25))


def test_delong_of_a_model_with_itself_and_of_a_clear_winner():
    y, prob = _scores(200)
    assert delong_test(y, prob[0], prob[0])["p"] == 1.0
    clear = delong_test(y, 0.9 * y + 0.1 * prob[0], prob[1])
    assert clear["diff"] > 0 and clear["p"] < 1e-3


class _Summing(nn.Module):
    """A model whose feature map is a 1×1 conv of the pixels and whose logit is its sum."""

    training = False

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def features(self, x):
        return self.conv(x.float() / 255)

    def forward_head(self, features):
        return features.sum(dim=(1, 2, 3))


def test_grad_cam_marks_where_the_evidence_is():
    model = _Summing()
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.conv.bias.zero_()
    images = torch.zeros((2, 3, 8, 8), dtype=torch.uint8)
    images[:, :, :, :4] = torch.randint(1, 255, (2, 3, 8, 4), dtype=torch.uint8)
    heat = grad_cam(model, images)
    assert heat.shape == (2, 8, 8)
    assert heat.max() == pytest.approx(1.0) and heat.min() >= 0
    assert heat[:, :, :4].min() > 0  # the bright left half
    assert np.all(heat[:, :, 4:] == 0)  # the black right half


def test_grad_cam_on_a_registry_model_and_its_overlay():
    from braintl.models import create_model

    model = create_model("scratch_cnn", image_size=32).train()
    images = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    heat = grad_cam(model, images)
    assert heat.shape == (3, 32, 32) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1
    assert model.training  # restored
    png = Image.open(io.BytesIO(overlay_png(images[0], heat[0])))
    assert png.format == "PNG" and png.size == (32, 32) and png.mode == "RGB"
    with pytest.raises(ValueError, match="3×H×W"):
        overlay_png(images[0, 0].numpy(), heat[0])
