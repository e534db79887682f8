"""The report's figures as PNG data URIs (matplotlib, Agg backend): one self-contained page."""

from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.figure import Figure  # noqa: E402

DPI = 96
CLASSES = ("No Tumor", "Tumor")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return data_uri(buffer.getvalue())


def _grid(n: int, width: float, height: float) -> tuple[Figure, list]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def roc_curves(models: list[dict], title: str = "ROC, held-out test set") -> str:
    """All models' ROC curves (fold-averaged probability) on one chart; ``models``: name, roc
    {fpr, tpr}, auc."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for model in models:
        if model["roc"]["fpr"]:
            label = f"{model['name']} (AUC {model['auc']:.3f})"
            ax.plot(model["roc"]["fpr"], model["roc"]["tpr"], label=label, drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def confusion_matrices(models: list[dict]) -> str:
    """One matrix per model (rows true, columns predicted; counts summed over fold models)."""
    fig, axes = _grid(len(models), 3.0, 2.8)
    for ax, model in zip(axes, models, strict=True):
        matrix = model["confusion_matrix"]
        ax.imshow(matrix, cmap="Blues")
        peak = max(max(row) for row in matrix) or 1
        for i in range(2):
            for j in range(2):
                colour = "white" if matrix[i][j] > peak / 2 else "black"
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center", color=colour)
        ax.set_xticks([0, 1], CLASSES, fontsize=8)
        ax.set_yticks([0, 1], CLASSES, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true")
        ax.set_title(model["name"], fontsize=9)
    fig.tight_layout()
    return _png(fig)


def learning_curves(models: list[dict]) -> str:
    """Per model, train loss (solid, left axis) and validation AUC (dashed, right) per epoch,
    one colour per fold; ``models``: name, runs [{fold, history}]."""
    fig, axes = _grid(len(models), 3.6, 2.8)
    for ax, model in zip(axes, models, strict=True):
        right = ax.twinx()
        for k, run in enumerate(model["runs"]):
            epochs = [r["epoch"] for r in run["history"]]
            colour = f"C{k}"
            ax.plot(epochs, [r["train_loss"] for r in run["history"]], c=colour)
            auc = [r.get("val_auc") for r in run["history"]]
            right.plot(epochs, [math.nan if a is None else a for a in auc], c=colour, ls="--")
        ax.set(xlabel="epoch", ylabel="train loss (solid)")
        right.set_ylabel("val AUC (dashed)")
        right.set_ylim(0, 1.02)
        ax.set_title(model["name"], fontsize=9)
    fig.tight_layout()
    return _png(fig)


def calibration(models: list[dict], title: str = "Calibration, held-out test set (10 bins)") -> str:
    """Reliability diagram of every model's fold-averaged probability, Brier and ECE in the
    legend; ``models``: name, reliability bins, brier, ece."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for model in models:
        bins = model["reliability"]
        label = f"{model['name']} (Brier {model['brier']:.3f}, ECE {model['ece']:.3f})"
        ax.plot([b["mean_prob"] for b in bins], [b["observed"] for b in bins], "o-", label=label)
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.set(xlabel="mean predicted P(tumor)", ylabel="observed share of tumors")
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)
