"""The fold ensemble: the model a run publishes, and the one its headline test figures score.

The k fold models of one configuration act as one model whose tumor probability is the mean of
theirs (nnU-Net's convention): no fold is thrown away, and no fold picked on a few dozen
validation images stands for the run. A model from ``braintl train`` is an ensemble of one.

Its decision threshold is Youden's J on the *out-of-fold* validation predictions: each
validation image scored by the one fold model that never trained on it. The ensemble itself
cannot be scored there (k − 1 of its members trained on every such image), so this is the only
unbiased stand-in for it on development data, and it uses every validation image, not one fold's.
"""

from __future__ import annotations

import numpy as np

from braintl.metrics import evaluate, youden_threshold
from braintl.uncertainty import BOOTSTRAP_RESAMPLES, bootstrap_metrics

BOOTSTRAP_SEED = 0


def out_of_fold(predictions: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Tensor-set indices and probabilities of the members' validation images, each scored by
    its own fold model; ``predictions`` are the members' ``evaluation.predictions`` (metrics.json).
    """
    index = np.concatenate([np.asarray(p["val"]["index"], dtype=np.int64) for p in predictions])
    prob = np.concatenate([np.asarray(p["val"]["prob"], dtype=np.float64) for p in predictions])
    if len(np.unique(index)) != len(index):
        raise ValueError("fold models validated on overlapping images: no out-of-fold predictions")
    return index, prob


def ensemble_threshold(labels: np.ndarray, predictions: list[dict]) -> float:
    """Youden's threshold on the out-of-fold validation predictions (``labels``: the tensor
    set's, indexed by the predictions' ``index``)."""
    index, prob = out_of_fold(predictions)
    return youden_threshold(labels[index], prob)


def out_of_fold_scores(labels: np.ndarray, predictions: list[dict], threshold: float) -> dict:
    """The out-of-fold validation scores at ``threshold`` (the figure the threshold was chosen
    on, so an optimistic one)."""
    index, prob = out_of_fold(predictions)
    return evaluate(labels[index], prob, threshold).to_dict()


def test_predictions(
    predictions: list[dict], groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tensor-set indices, source groups and the members' probabilities (k×N; their mean is the
    ensemble's) on the held-out test set, which every member must have scored alike. ``groups``
    (the tensor set's) serves records written before predictions carried their group."""
    index = np.asarray(predictions[0]["test"]["index"], dtype=np.int64)
    for p in predictions[1:]:
        if not np.array_equal(index, np.asarray(p["test"]["index"], dtype=np.int64)):
            raise ValueError("fold models were tested on different images")
    probs = np.asarray([p["test"]["prob"] for p in predictions], dtype=np.float64)
    test_groups = np.asarray(predictions[0]["test"].get("group", groups[index]))
    return index, test_groups, probs


def headline(
    y: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    groups: np.ndarray | None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, dict]:
    """The ensemble's test scores at its threshold with 95% cluster-bootstrap intervals
    (``groups`` None: the image bootstrap): the figure the model card and the report lead with."""
    return bootstrap_metrics(y, prob, [threshold], groups, resamples, seed)
