"""The seed study's published figures (its Table 1, test set), to set beside ours.

From ``seed/000_521be185051353fb.txt`` (Al-Janabi, "Deep Learning Transfer Methods for
Biomedical Classification of Images") as DESIGN.md transcribes it. The seed augmented its 251
scans to 2062 *before* a random 70/15/15 split, so copies of one scan sit in train and test: its
protocol is our ``paper`` protocol, leaky. It reports no specificity and no spread.
"""

from __future__ import annotations

SEED_PROTOCOL = "paper"
SEED_SOURCE = "Al-Janabi, Deep Learning Transfer Methods for Biomedical Classification of Images"
SEED_PROTOCOL_NOTE = (
    "seed: test set of a random 70/15/15 split made after augmentation (leaky: copies of one "
    "scan in train and test); Xception fine-tuned with 5-fold cross-validation; one figure, no "
    "spread"
)

# (backbone, strategy) → the seed's row name and its figures as fractions.
TABLE_1: dict[tuple[str, str], dict] = {
    ("xception", "frozen"): {
        "name": "Xception",
        "figures": {
            "accuracy": 0.9208,
            "precision": 0.9242,
            "recall": 0.951,
            "f1": 0.9375,
            "auc": 0.9531,
        },
    },
    ("xception", "finetune"): {
        "name": "Xception fine-tuned",
        "figures": {
            "accuracy": 0.96,
            "precision": 0.977,
            "recall": 0.9401,
            "f1": 0.96,
            "auc": 0.9691,
        },
        "per_class_accuracy": {"tumor": 0.94, "no_tumor": 1.0},
    },
    ("resnet50", "frozen"): {
        "name": "ResNet50",
        "figures": {
            "accuracy": 0.751,
            "precision": 0.625,
            "recall": 0.66,
            "f1": 0.6933,
            "auc": 0.72,
        },
    },
    ("vgg16", "frozen"): {
        "name": "VGG-16",
        "figures": {
            "accuracy": 0.8941,
            "precision": 0.931,
            "recall": 0.892,
            "f1": 0.921,
            "auc": 0.934,
        },
    },
    ("vgg16", "finetune"): {
        "name": "VGG-16 fine-tuned",
        "figures": {
            "accuracy": 0.9112,
            "precision": 0.9542,
            "recall": 0.9024,
            "f1": 0.9232,
            "auc": 0.9411,
        },
    },
    ("scratch_cnn", "full"): {
        "name": "2D-CNN",
        "figures": {
            "accuracy": 0.8035,
            "precision": 0.811,
            "recall": 0.792,
            "f1": 0.821,
            "auc": 0.836,
        },
    },
    ("mobilenet_v2", "frozen"): {
        "name": "MobileNetV2",
        "figures": {
            "accuracy": 0.7921,
            "precision": 0.7464,
            "recall": 0.7552,
            "f1": 0.8166,
            "auc": 0.8541,
        },
    },
}


def seed_row(backbone: str, strategy: str) -> dict | None:
    """The seed's figures for this (backbone, strategy), with its protocol; None when the seed
    trained no such model (e.g. MobileNetV2 fine-tuned)."""
    row = TABLE_1.get((backbone, strategy))
    if row is None:
        return None
    return {"protocol": SEED_PROTOCOL, "per_class_accuracy": None, **row}


def seed_best() -> dict:
    """The seed's headline model: the highest AUC in its Table 1."""
    key = max(TABLE_1, key=lambda k: TABLE_1[k]["figures"]["auc"])
    return {"backbone": key[0], "strategy": key[1], **seed_row(*key)}
