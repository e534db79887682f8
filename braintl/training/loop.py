"""The training loop, plain PyTorch in the manner of torchvision's reference scripts.

One formulation for every model: the model returns one tumor logit per image and the loss is
``BCEWithLogitsLoss`` on it. Batches are sliced from the uint8 tensor cache and normalised
inside the model, so nothing is converted to float on the CPU. Where a strategy freezes the
first blocks, their output comes from the feature cache (:mod:`braintl.training.features`) and
only the trainable rest runs each epoch. The best epoch (by validation AUC, ties broken by lower
validation loss) is kept in memory and returned.

Determinism: the seed fixes the model's initial weights, dropout and the shuffling order
(a dedicated ``torch.Generator``), and a checkpoint stores all three RNG states, so a resumed
run continues exactly where an uninterrupted one would have been (on CPU; cuDNN kernels may
add nondeterminism on GPUs).

Checkpoints and the best epoch's snapshot hold only what training can change: the head and the
opened blocks. Frozen blocks come back from the same ``weights`` when the model is rebuilt, so a
frozen VGG-16's checkpoint is its head (a few MB), not the 126 MB of the whole model.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from braintl.data.tensors import TensorSet
from braintl.errors import UserError
from braintl.metrics import evaluate, json_safe
from braintl.models import apply_strategy, create_model, frozen_state_keys, resolve_strategy
from braintl.storage import Location, resolve
from braintl.training import pause
from braintl.training.config import RESUMABLE_CHANGES, TrainConfig
from braintl.training.device import (
    BatchSource,
    autocast,
    compiled,
    first_epoch_overhead,
    fused_adam,
    prepare_model,
    resolve_device,
)
from braintl.training.features import PrefixCache, TrainablePart, prefix_cache
from braintl.training.host_memory import reuse_freed_memory
from braintl.training.inference import EVAL_BATCH_SIZE, predict_logits

CHECKPOINT_FORMAT = 2  # 2: frozen blocks left out; 1 (whole model) still loads
READABLE_FORMATS = (1, 2)

# Why a run ended; a checkpoint with any reason but EPOCHS is final, EPOCHS can be extended.
EPOCHS = "epochs"
EARLY_STOPPING = "early_stopping"
PROGRESSIVE = "progressive"
CALLBACK = "callback"

Callback = Callable[[dict], bool | None]
# torch.optim's optimizers import torch._dynamo when built (``add_param_group`` is wrapped in
# ``torch._disable_dynamo``), about 2 CPU s: a caller can import it ahead, beside other work.
TRAINING_IMPORTS = ("torch._dynamo",)


class StopTraining(Exception):
    """Raised by a per-epoch callback to end training after the current epoch."""


@dataclass
class TrainResult:
    """A trained model (holding its best epoch's weights, in eval mode) and how it got there."""

    model: nn.Module
    history: list[dict]
    best_epoch: int
    best_val_auc: float
    stage_reached: int | None
    stopped_by: str
    config: TrainConfig
    device: str
    seconds: float
    compile_seconds: float | None = None  # torch.compile's first-epoch overhead, when on
    # The frozen-prefix cache the last epoch trained on, valid for the returned weights too
    # (blocks frozen at the end were frozen throughout), so evaluation can skip the prefix.
    prefix: PrefixCache | None = None

    def to_dict(self) -> dict:
        """Everything but the model, as strict JSON (undefined AUCs become ``None``)."""
        return json_safe(
            {
                "config": self.config.model_dump(),
                "history": self.history,
                "best_epoch": self.best_epoch,
                "best_val_auc": self.best_val_auc,
                "stage_reached": self.stage_reached,
                "stopped_by": self.stopped_by,
                "device": self.device,
                "seconds": self.seconds,
                "compile_seconds": self.compile_seconds,
            }
        )


@dataclass
class _State:
    """What a checkpoint holds besides model, optimizer and RNG states."""

    stage: int
    epoch: int = 0
    stage_start: int = 0  # the last epoch before the current stage began
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_key: tuple[float, float] = (-math.inf, -math.inf)
    best_state: dict[str, torch.Tensor] | None = None
    stopped_by: str | None = None


class _Run:
    """One model being trained on one (train, validation) partition."""

    def __init__(
        self,
        tensors: TensorSet,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        config: TrainConfig,
        device: torch.device,
    ):
        self.config = config
        self.device = device
        self.tensors = tensors
        self.val_idx = val_idx
        self.images = torch.from_numpy(tensors.images)  # shared with numpy, never copied whole
        self.batches = BatchSource(tensors.images, device)  # on the GPU whole when it fits
        self.labels = torch.from_numpy(tensors.labels.astype(np.float32))
        self.train_idx = torch.from_numpy(train_idx)
        self.val_images = self.images[val_idx]
        self.val_labels = tensors.labels[val_idx]
        self.loss_fn = nn.BCEWithLogitsLoss()
        torch.manual_seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        options = {"head_units": config.head_units, "dropout": config.dropout}
        model = create_model(
            config.backbone,
            weights=config.weights,
            head=config.head,
            image_size=tensors.images.shape[-1],
            **{k: v for k, v in options.items() if v is not None},
        )
        self.model = prepare_model(model, device)
        self.state = _State(stage=1 if config.strategy == "progressive" else 0)
        self.configure()

    def configure(self) -> None:
        """Trainable parameters and a fresh Adam for the current stage (as Keras recompiles).
        During ``warmup_epochs`` the backbone stays frozen, so a new head learns on fixed
        features before blocks open: the seed's two-stage fine-tuning."""
        warming = self.state.epoch < self.config.warmup_epochs
        strategy = "frozen" if warming else self.config.strategy
        self.plan = resolve_strategy(self.model, strategy, stage=0 if warming else self.state.stage)
        apply_strategy(self.model, self.plan)
        self.frozen = frozen_state_keys(self.model, self.plan)
        best = self.state.best_state
        if best is not None:  # blocks opened now were frozen at the best epoch: keep those values
            best.update({k: v for k, v in self.snapshot().items() if k not in best})
        groups = self.plan.param_groups(self.model, self.config.lr, self.config.backbone_lr_factor)
        self.optimizer = torch.optim.Adam(
            groups, weight_decay=self.config.weight_decay, fused=fused_adam(self.device)
        )
        self.inputs = self.cache = None  # built by the next epoch (a resume reconfigures first)

    def build_inputs(self) -> None:
        """What the next epochs feed: with the feature cache on and a frozen prefix, its cached
        activations and the trainable rest of the model; else uint8 images and the model."""
        cache = None
        if self.config.feature_cache:
            budget = self.config.feature_memory_budget_mb
            cache = prefix_cache(self.model, self.plan, self.tensors, self.device, budget)
        self.cache = cache
        if cache is None:
            self.net, self.inputs, self.val_inputs = self.model, self.batches, self.val_images
        else:
            self.net = TrainablePart(self.model, cache.start)
            self.inputs, self.val_inputs = cache.source, cache.rows(self.val_idx)
        self.forward = compiled(self.net, self.config.compile)

    def train_epoch(self) -> float:
        if self.inputs is None:
            self.build_inputs()
        self.model.train()  # frozen BatchNorm stays in eval (see apply_strategy)
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=self.generator)]
        total = torch.zeros((), device=self.device)
        seen = 0
        for batch in order.split(self.config.batch_size):
            if len(batch) < 2:  # BatchNorm cannot train on one image; it rejoins next epoch
                continue
            x = self.inputs.take(batch)
            y = self.labels[batch].to(self.device, non_blocking=True)
            with autocast(self.device):
                logits = self.forward(x)
            loss = self.loss_fn(logits, y.to(logits.dtype))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach() * len(batch)
            seen += len(batch)
        return (total / seen).item()

    def epoch(self) -> dict:
        """Train and validate one epoch; update the best epoch and decide whether to go on."""
        started = time.perf_counter()
        state = self.state
        train_loss = self.train_epoch()
        logits = predict_logits(self.net, self.val_inputs, EVAL_BATCH_SIZE, self.device)
        if not torch.isfinite(logits).all():
            raise UserError(
                f"training diverged: non-finite validation logits at epoch {state.epoch + 1} "
                f"({self.config.backbone}, lr {self.config.lr}); lower the learning rate"
            )
        val_loss = self.loss_fn(logits, torch.from_numpy(self.val_labels).to(logits.dtype)).item()
        scores = evaluate(self.val_labels, torch.sigmoid(logits).numpy())
        state.epoch += 1
        record = {
            "epoch": state.epoch,
            "stage": state.stage,
            "strategy": self.plan.name,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_auc": scores.auc,
            "val_acc": scores.accuracy,
            "lr": max(group["lr"] for group in self.optimizer.param_groups),
            "seconds": time.perf_counter() - started,
        }
        state.history.append(record)
        key = (scores.auc if math.isfinite(scores.auc) else -math.inf, -val_loss)
        if key > state.best_key:
            state.best_key, state.best_epoch = key, state.epoch
            state.best_state = self.snapshot()
        self.decide()
        return record

    def decide(self) -> None:
        """Set ``stopped_by``; end a warm-up; for ``progressive`` open the next block when it
        helped."""
        state, config = self.state, self.config
        patience = config.early_stopping_patience
        if state.epoch >= config.epochs:
            state.stopped_by = EPOCHS
        elif patience is not None and state.epoch - state.best_epoch >= patience:
            state.stopped_by = EARLY_STOPPING
        elif state.epoch == config.warmup_epochs:  # the head is warm: open the strategy's blocks
            state.stage_start = state.epoch
            self.configure()
        elif (
            config.strategy == "progressive"
            and state.epoch - state.stage_start >= config.progressive_epochs_per_stage
        ):
            improved = state.best_epoch > state.stage_start
            if improved and state.stage < len(self.model.spec.blocks):
                state.stage += 1
                state.stage_start = state.epoch
                self.configure()
            else:
                state.stopped_by = PROGRESSIVE

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the state-dict entries training can change (all but the frozen blocks')."""
        return {
            k: v.detach().cpu().clone()
            for k, v in self.model.state_dict().items()
            if k not in self.frozen
        }

    def load(self, entries: dict[str, torch.Tensor], what: str) -> None:
        """Load a snapshot onto the model, whose frozen blocks already hold their weights."""
        outcome = self.model.load_state_dict(entries, strict=False)
        missing = set(outcome.missing_keys) - self.frozen
        if missing or outcome.unexpected_keys:
            raise ValueError(
                f"{what} does not fit {self.config.backbone}/{self.config.strategy}: missing "
                f"{sorted(missing)[:3]}, unexpected {sorted(outcome.unexpected_keys)[:3]}"
            )

    def checkpoint(self, data_key: str) -> dict:
        s = self.state
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.model_dump(),
            "data_key": data_key,
            "model": self.snapshot(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "generator": self.generator.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "state": {
                "stage": s.stage,
                "epoch": s.epoch,
                "stage_start": s.stage_start,
                "history": s.history,
                "best_epoch": s.best_epoch,
                "best_key": list(s.best_key),
                "best_state": s.best_state,
                "stopped_by": s.stopped_by,
            },
        }

    def restore(self, payload: dict) -> None:
        st = payload["state"]
        self.state = _State(
            stage=st["stage"],
            epoch=st["epoch"],
            stage_start=st["stage_start"],
            history=st["history"],
            best_epoch=st["best_epoch"],
            best_key=tuple(st["best_key"]),
            best_state=st["best_state"],
            stopped_by=st["stopped_by"],
        )
        self.configure()
        self.load(payload["model"], "the checkpoint's model")
        self.optimizer.load_state_dict(payload["optimizer"])
        self.generator.set_state(payload["rng"]["generator"])
        torch.set_rng_state(payload["rng"]["torch"])
        if payload["rng"]["cuda"] and torch.cuda.device_count() == len(payload["rng"]["cuda"]):
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])


def train(
    tensors: TensorSet,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    callback: Callback | None = None,
    checkpoint_url: str | Location | None = None,
) -> TrainResult:
    """Train ``config.backbone`` on ``train_idx``, choosing the best epoch on ``val_idx``.

    ``callback(record)`` runs after every epoch with that epoch's history record (epoch, stage,
    train_loss, val_loss, val_auc, val_acc, lr, seconds); returning True or raising
    :class:`StopTraining` ends training after that epoch. With ``checkpoint_url`` (a file URL),
    model, optimizer, RNG and history are written through storage after the first epoch, the
    last, and any epoch ending ``config.checkpoint_interval_s`` after the last write, and a run
    finding a checkpoint there continues from it — or, when that run had finished, returns its
    result without training. A finished run's checkpoint accepts a larger ``epochs``.
    """
    train_idx, val_idx = _check_indices(tensors, train_idx, val_idx)
    # Subnormal floats (the vanishing activations of a randomly initialised deep net) make x86
    # arithmetic up to 100× slower; flushing them to zero changes only values below 1e-38.
    # Process-wide and without a getter, so it stays on (a no-op where unsupported).
    torch.set_flush_denormal(True)
    reuse_freed_memory()  # large batch tensors come back from the heap, not fresh pages
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(tensors, train_idx, val_idx, config, callback, checkpoint_url)
    finally:
        torch.set_num_threads(threads)  # a process-wide setting: leave it as found


def _train(
    tensors: TensorSet,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    callback: Callback | None,
    checkpoint_url: str | Location | None,
) -> TrainResult:
    started = time.perf_counter()
    device = resolve_device(config.device)
    run = _Run(tensors, train_idx, val_idx, config, device)
    location = resolve(checkpoint_url) if isinstance(checkpoint_url, str) else checkpoint_url
    data_key = _data_key(tensors, train_idx, val_idx)
    if location is not None and location.exists():
        run.restore(_read_checkpoint(location, config, data_key))
        if run.state.stopped_by in (None, EPOCHS):  # the epoch budget may have changed
            run.state.stopped_by = EPOCHS if run.state.epoch >= config.epochs else None
    state = run.state
    written = -math.inf  # when this process last wrote the checkpoint
    while state.stopped_by is None:
        record = run.epoch()
        if callback is not None and _callback_stops(callback, record):
            state.stopped_by = state.stopped_by or CALLBACK
        # Not every short epoch: each write is the whole trainable state and Adam's moments
        # (47 MB for MobileNetV2's paper head, 0.1 s), 15 % of a 0.6 s CPU epoch.
        if location is not None and (
            state.stopped_by is not None
            or time.monotonic() - written >= config.checkpoint_interval_s
            or pause.requested(state.epoch, location.url)
        ):
            _write_checkpoint(location, run.checkpoint(data_key))
            written = time.monotonic()
            pause.after_checkpoint(state.epoch, location.url)
    run.load(state.best_state, "the best epoch's snapshot")
    run.model.eval()
    return TrainResult(
        model=run.model,
        history=state.history,
        best_epoch=state.best_epoch,
        best_val_auc=state.history[state.best_epoch - 1]["val_auc"],
        stage_reached=state.history[-1]["stage"] if config.strategy == "progressive" else None,
        stopped_by=state.stopped_by,
        config=config,
        device=str(device),
        seconds=time.perf_counter() - started,
        compile_seconds=first_epoch_overhead(state.history) if config.compile else None,
        prefix=run.cache,
    )


def _callback_stops(callback: Callback, record: dict) -> bool:
    try:
        return bool(callback(dict(record)))
    except StopTraining:
        return True


def _check_indices(
    tensors: TensorSet, train_idx: np.ndarray, val_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    train_idx = np.asarray(train_idx, dtype=np.int64)
    val_idx = np.asarray(val_idx, dtype=np.int64)
    if len(train_idx) < 2 or len(val_idx) == 0:
        raise ValueError(
            f"training needs at least 2 training and 1 validation image, "
            f"got {len(train_idx)} and {len(val_idx)}"
        )
    for name, idx in (("train", train_idx), ("validation", val_idx)):
        if idx.min() < 0 or idx.max() >= len(tensors):
            raise ValueError(f"{name} indices fall outside the {len(tensors)} images")
    if np.intersect1d(train_idx, val_idx).size:
        raise ValueError("train and validation indices overlap: that would leak validation images")
    _, _, height, width = tensors.images.shape
    if height != width:
        raise ValueError(f"images must be square, got {height}×{width}")
    return train_idx, val_idx


def _data_key(tensors: TensorSet, train_idx: np.ndarray, val_idx: np.ndarray) -> str:
    """Identifies the partition a checkpoint was trained on, so a resume cannot switch data."""
    digest = hashlib.sha256()
    for array in (np.asarray(tensors.images.shape), train_idx, val_idx, tensors.labels):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _write_checkpoint(location: Location, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    location.write_bytes(buffer.getvalue())


def _read_checkpoint(location: Location, config: TrainConfig, data_key: str) -> dict:
    fix = "delete it or pass another checkpoint URL"
    try:  # weights only: a pickle planted in storage cannot run code here
        payload = torch.load(
            io.BytesIO(location.read_bytes()), map_location="cpu", weights_only=True
        )
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise UserError(  # not torch's text: it suggests weights_only=False
            f"{location.url}: not a weights-only braintl checkpoint ({type(exc).__name__}: it "
            f"holds more than tensors and plain values); refused, {fix}"
        ) from exc
    if payload.get("format") not in READABLE_FORMATS:
        raise UserError(f"{location.url}: not a braintl training checkpoint; {fix}")
    if payload["data_key"] != data_key:
        raise UserError(f"{location.url}: written for other training data or folds; {fix}")
    saved, current = payload["config"], config.model_dump()
    # A field added since the checkpoint was written had its default then.
    defaults = {k: field.default for k, field in TrainConfig.model_fields.items()}
    changed = sorted(
        k for k in current if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != current[k]
    )
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise UserError(f"{location.url}: written with another configuration ({diffs}); {fix}")
    return payload
