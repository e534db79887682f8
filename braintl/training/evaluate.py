"""Scores of a trained model on the validation and test parts of a TensorSet."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from braintl.data.tensors import TensorSet
from braintl.metrics import ThresholdedMetrics, evaluate_at_thresholds, youden_threshold
from braintl.training.features import PrefixCache
from braintl.training.inference import EVAL_BATCH_SIZE, predict_proba


@dataclass(frozen=True)
class SplitEvaluation:
    """Validation and test scores, both at 0.5 and at the Youden threshold of the validation set,
    and per image its index into the TensorSet, source group and tumor probability."""

    threshold: float
    val: ThresholdedMetrics
    test: ThresholdedMetrics | None
    val_idx: np.ndarray
    val_group: np.ndarray
    val_prob: np.ndarray
    test_idx: np.ndarray
    test_group: np.ndarray
    test_prob: np.ndarray

    def to_dict(self, include_predictions: bool = False) -> dict:
        """Scores as JSON; with ``include_predictions`` also the per-image probabilities with
        each image's index into the TensorSet and its source group, which paired comparisons
        between models and group bootstraps need (records written before groups were stored
        lack ``group``; the report then reads it from the TensorSet)."""
        out = {
            "youden_threshold_from_val": self.threshold,
            "val": self.val.to_dict(),
            "test": self.test.to_dict() if self.test else None,
        }
        if include_predictions:
            out["predictions"] = {
                part: {
                    "index": index.tolist(),
                    "group": group.tolist(),
                    "prob": prob.tolist(),
                }
                for part, index, group, prob in (
                    ("val", self.val_idx, self.val_group, self.val_prob),
                    ("test", self.test_idx, self.test_group, self.test_prob),
                )
            }
        return out


def evaluate_split(
    model: torch.nn.Module,
    tensors: TensorSet,
    val_idx: np.ndarray,
    test_idx: np.ndarray | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | None = None,
    prefix: PrefixCache | None = None,
) -> SplitEvaluation:
    """Score ``model`` on validation and test images (``test_idx`` defaults to the split's test
    part; pass an empty array to skip it). The Youden threshold comes from validation only.
    With ``prefix`` (``TrainResult.prefix``), the frozen blocks' output comes from that cache."""
    val_idx = np.asarray(val_idx, dtype=np.int64)
    test_idx = np.asarray(tensors.split.test if test_idx is None else test_idx, dtype=np.int64)
    if len(val_idx) == 0:
        raise ValueError("evaluate_split needs validation images to choose the threshold")
    if prefix is None:
        val_prob = predict_proba(model, tensors.images[val_idx], batch_size, device)
        test_prob = predict_proba(model, tensors.images[test_idx], batch_size, device)
    else:
        val_prob, test_prob = (
            torch.sigmoid(prefix.logits(model, idx, batch_size)).numpy()
            for idx in (val_idx, test_idx)
        )
    threshold = youden_threshold(tensors.labels[val_idx], val_prob)
    test = (
        evaluate_at_thresholds(tensors.labels[test_idx], test_prob, threshold)
        if len(test_idx)
        else None
    )
    return SplitEvaluation(
        threshold=threshold,
        val=evaluate_at_thresholds(tensors.labels[val_idx], val_prob, threshold),
        test=test,
        val_idx=val_idx,
        val_group=tensors.groups[val_idx],
        val_prob=val_prob,
        test_idx=test_idx,
        test_group=tensors.groups[test_idx],
        test_prob=test_prob,
    )
