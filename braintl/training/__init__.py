"""Training and evaluation of one model on one partition of a TensorSet.

``result = train(tensors, train_idx, val_idx, TrainConfig(...))`` trains and keeps the best
epoch; ``evaluate_split(result.model, tensors, val_idx)`` then scores validation and the held-out
test part, with the Youden threshold taken from validation only.
"""

from braintl.training.config import TrainConfig
from braintl.training.device import resolve_device
from braintl.training.evaluate import SplitEvaluation, evaluate_split
from braintl.training.inference import predict_proba
from braintl.training.loop import TRAINING_IMPORTS, StopTraining, TrainResult, train

__all__ = [
    "TRAINING_IMPORTS",
    "SplitEvaluation",
    "StopTraining",
    "TrainConfig",
    "TrainResult",
    "evaluate_split",
    "predict_proba",
    "resolve_device",
    "train",
]
