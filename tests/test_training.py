import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from tolerances import logit_tolerance
from torch import nn

from braintl import metrics
from braintl.data.tensors import Split, TensorSet
from braintl.errors import UserError
from braintl.metrics import youden_threshold
from braintl.models import create_model, frozen_state_keys
from braintl.training import (
    StopTraining,
    TrainConfig,
    evaluate_split,
    loop,
    predict_proba,
    train,
)
from braintl.training.inference import predict_logits


def blob_tensors(n=96, size=32, seed=0, noise_labels=False) -> TensorSet:
    """Dark noise images; tumor images carry one bright square blob somewhere."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, (n, 3, size, size), dtype=np.uint8)
    blob = size // 6
    for i in np.flatnonzero(labels):
        y, x = rng.integers(0, size - blob, 2)
        images[i, :, y : y + blob, x : x + blob] = rng.integers(190, 255)
    if noise_labels:
        labels = rng.permutation(labels)
    order = rng.permutation(n)
    test, dev = order[: n // 4], order[n // 4 :]
    split = Split("groups", np.sort(test), tuple(np.sort(f) for f in np.array_split(dev, 2)), False)
    return TensorSet(
        images=images,
        labels=labels.astype(np.int64),
        groups=np.arange(n),
        augmented=np.zeros(n, bool),
        split=split,
        meta={},
    )


# One thread: far faster than two when other processes share the two CPU cores.
FAST = {"epochs": 3, "batch_size": 16, "num_threads": 1}


def strip_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def blobs():
    return blob_tensors()


@pytest.fixture
def scripted_auc(monkeypatch):
    """Replace the validation AUC of successive epochs by given values (training stays real),
    so decisions that depend on it — best epoch, early stopping, progressive stages — are
    exercised deterministically."""

    def script(values):
        values = iter(values)

        def scored(y, prob):
            return dataclasses.replace(metrics.evaluate(y, prob), auc=next(values))

        monkeypatch.setattr(loop, "evaluate", scored)

    return script


def test_deterministic_for_a_seed(blobs):
    train_idx, val_idx = blobs.fold(0)
    config = TrainConfig(**FAST)
    a = train(blobs, train_idx, val_idx, config)
    b = train(blobs, train_idx, val_idx, config)
    assert strip_seconds(a.history) == strip_seconds(b.history)
    assert states_equal(a.model, b.model)
    c = train(blobs, train_idx, val_idx, config.model_copy(update={"seed": 1}))
    assert strip_seconds(c.history) != strip_seconds(a.history)


def test_history_and_result_are_json(blobs):
    result = train(blobs, *blobs.fold(0), TrainConfig(**FAST))
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert set(result.history[0]) == {
        "epoch",
        "stage",
        "strategy",
        "train_loss",
        "val_loss",
        "val_auc",
        "val_acc",
        "lr",
        "seconds",
    }
    assert result.stopped_by == "epochs" and result.stage_reached is None
    json.dumps(result.to_dict(), allow_nan=False)


def test_best_epoch_weights_are_returned(blobs, scripted_auc):
    scripted_auc([0.6, 0.9, 0.7, 0.8])
    train_idx, val_idx = blobs.fold(0)
    result = train(blobs, train_idx, val_idx, TrainConfig(**{**FAST, "epochs": 4}))
    assert result.best_epoch == 2 and result.best_val_auc == 0.9
    # the returned weights reproduce epoch 2's validation loss, not the last epoch's
    images = blobs.images[val_idx]
    logits = predict_logits(result.model, images)
    y = torch.from_numpy(blobs.labels[val_idx]).float()
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y).item()
    # The loss's slope in each logit is at most 1, so it moves no more than the logits do
    # between two evaluations (see tolerances); epoch 4's loss lies further away.
    tol = logit_tolerance(result.model, images)
    assert loss == pytest.approx(result.history[1]["val_loss"], abs=tol)
    assert loss != pytest.approx(result.history[3]["val_loss"], abs=tol)


def test_callback_sees_every_epoch_and_can_stop(blobs):
    seen = []
    result = train(blobs, *blobs.fold(0), TrainConfig(**FAST), callback=seen.append)
    assert seen == result.history
    result = train(blobs, *blobs.fold(0), TrainConfig(**FAST), callback=lambda r: r["epoch"] == 2)
    assert len(result.history) == 2 and result.stopped_by == "callback"

    def raise_stop(record):
        raise StopTraining

    result = train(blobs, *blobs.fold(0), TrainConfig(**FAST), callback=raise_stop)
    assert len(result.history) == 1 and result.stopped_by == "callback"


@pytest.mark.parametrize(
    ("interval_s", "rerun"),
    [
        (0, [3, 4]),  # every epoch: epoch 3's checkpoint was not written before the crash
        (1e9, [2, 3, 4]),  # only the first epoch's: the interval never passed
    ],
)
def test_checkpoint_resume_continues_where_it_stopped(blobs, tmp_path, interval_s, rerun):
    train_idx, val_idx = blobs.fold(0)
    config = TrainConfig(**{**FAST, "epochs": 4, "checkpoint_interval_s": interval_s})
    full = train(blobs, train_idx, val_idx, config)

    def crash_at_3(record):
        if record["epoch"] == 3:
            raise RuntimeError("worker lost")

    url = str(tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(RuntimeError, match="worker lost"):
        train(blobs, train_idx, val_idx, config, callback=crash_at_3, checkpoint_url=url)
    epochs_run = []
    resumed = train(blobs, train_idx, val_idx, config, lambda r: epochs_run.append(r["epoch"]), url)
    assert epochs_run == rerun
    assert strip_seconds(resumed.history) == strip_seconds(full.history)
    assert states_equal(resumed.model, full.model)

    # a finished run is returned from its checkpoint; a larger budget extends it
    again = train(blobs, train_idx, val_idx, config, lambda r: pytest.fail("trained"), url)
    assert strip_seconds(again.history) == strip_seconds(full.history)
    longer = train(blobs, train_idx, val_idx, config.model_copy(update={"epochs": 5}), None, url)
    assert [r["epoch"] for r in longer.history] == [1, 2, 3, 4, 5]

    with pytest.raises(UserError, match=r"lr: 0.001 -> 0.01"):
        train(blobs, train_idx, val_idx, config.model_copy(update={"lr": 0.01}), None, url)
    with pytest.raises(UserError, match="other training data"):
        train(blobs, *blobs.fold(1), config, None, url)


def test_early_stopping(blobs, scripted_auc):
    scripted_auc([0.6, 0.7, 0.65, 0.68, 0.9])
    config = TrainConfig(**{**FAST, "epochs": 5, "early_stopping_patience": 2})
    result = train(blobs, *blobs.fold(0), config)
    assert result.stopped_by == "early_stopping"
    assert (len(result.history), result.best_epoch) == (4, 2)


PROGRESSIVE = {**FAST, "backbone": "mobilenet_v2", "strategy": "progressive", "head": "gap"}


def test_progressive_moves_on_while_validation_auc_improves(blobs, scripted_auc):
    # stage 1 sets the bar, stage 2 beats it (epoch 4), stage 3 does not: stop there
    scripted_auc([0.60, 0.62, 0.61, 0.70, 0.65, 0.69])
    config = TrainConfig(**{**PROGRESSIVE, "epochs": 12, "progressive_epochs_per_stage": 2})
    result = train(blobs, *blobs.fold(0), config)
    assert [r["stage"] for r in result.history] == [1, 1, 2, 2, 3, 3]
    assert (result.stopped_by, result.stage_reached, result.best_epoch) == ("progressive", 3, 4)
    assert [r["lr"] for r in result.history] == [1e-3] * 6
    model = result.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert model.plan.stage == 3 and trainable == model.plan.trainable
    assert model.plan.blocks == tuple(block.name for block in model.spec.blocks[-3:])


def test_snapshots_leave_frozen_blocks_out_and_restore_late_opened_ones(
    blobs, scripted_auc, tmp_path
):
    """The best epoch falls in stage 1; stage 2 then trains one more block without beating it.
    The returned model has that block at its starting weights, though no snapshot taken in
    stage 1 held it, and the checkpoint holds only what training could change."""
    scripted_auc([0.70, 0.60, 0.65, 0.60])
    config = TrainConfig(**{**PROGRESSIVE, "epochs": 8, "progressive_epochs_per_stage": 2})
    url = tmp_path / "checkpoint.pt"
    result = train(blobs, *blobs.fold(0), config, checkpoint_url=str(url))
    assert (result.best_epoch, result.stage_reached, result.stopped_by) == (1, 2, "progressive")
    model = result.model
    saved = torch.load(url, weights_only=True)["model"]
    assert set(saved) == set(model.state_dict()) - frozen_state_keys(model, model.plan)
    assert any(k.startswith("head.") for k in saved)
    assert not any(k.startswith("backbone.features.0.") for k in saved)  # the stem stays out

    torch.manual_seed(config.seed)
    start = create_model("mobilenet_v2", head="gap", image_size=blobs.images.shape[-1])
    block = model.spec.blocks[-2]  # opened in stage 2, after the best epoch
    keys = [k for k in saved if block.owns(k.removeprefix("backbone."))]
    assert keys
    trained = model.state_dict()
    for key in keys:
        assert torch.equal(trained[key], start.state_dict()[key]), key


def test_warmup_trains_the_head_alone_then_opens_the_last_block(blobs, scripted_auc, tmp_path):
    """The seed's two-stage fine-tuning: a new head learns on the frozen backbone, then the
    last block trains too, with a fresh optimizer; a resume across the switch changes nothing."""
    finetune = {"backbone": "mobilenet_v2", "strategy": "finetune", "head": "gap"}
    every_epoch = {"checkpoint_interval_s": 0}  # epoch 3's checkpoint: a resume after the switch
    config = TrainConfig(**{**FAST, **finetune, "epochs": 4, "warmup_epochs": 2, **every_epoch})
    # The last epoch is best, so its weights come back; the resume rescores epoch 4 only.
    scripted_auc([0.5, 0.6, 0.7, 0.8] * 2 + [0.8])
    full = train(blobs, *blobs.fold(0), config)
    assert [r["strategy"] for r in full.history] == ["frozen", "frozen", "finetune", "finetune"]
    torch.manual_seed(config.seed)
    start = create_model("mobilenet_v2", head="gap", image_size=blobs.images.shape[-1])
    last = full.model.spec.blocks[-1]
    changed = {
        key
        for key, value in full.model.state_dict().items()
        if key.startswith("backbone.") and not torch.equal(value, start.state_dict()[key])
    }
    assert changed and all(last.owns(k.removeprefix("backbone.")) for k in changed)

    def crash_at_4(record):
        if record["epoch"] == 4:
            raise RuntimeError("worker lost")

    url = str(tmp_path / "checkpoint.pt")
    with pytest.raises(RuntimeError, match="worker lost"):
        train(blobs, *blobs.fold(0), config, callback=crash_at_4, checkpoint_url=url)
    resumed = train(blobs, *blobs.fold(0), config, checkpoint_url=url)
    assert strip_seconds(resumed.history) == strip_seconds(full.history)
    assert states_equal(resumed.model, full.model)


def test_warmup_needs_blocks_to_open_and_an_epoch_after_it():
    with pytest.raises(ValueError, match="not 'frozen'"):
        TrainConfig(backbone="mobilenet_v2", strategy="frozen", warmup_epochs=1)
    with pytest.raises(ValueError, match="leaves no epoch"):
        TrainConfig(backbone="mobilenet_v2", strategy="finetune", epochs=3, warmup_epochs=3)


def test_progressive_stops_when_blocks_run_out(blobs, scripted_auc):
    blocks = 8  # mobilenet_v2's
    scripted_auc([0.5 + 0.01 * i for i in range(blocks)])
    config = TrainConfig(**{**PROGRESSIVE, "epochs": 20, "progressive_epochs_per_stage": 1})
    result = train(blobs, *blobs.fold(0), config)
    assert [r["stage"] for r in result.history] == list(range(1, blocks + 1))
    assert (result.stopped_by, result.stage_reached) == ("progressive", blocks)


def test_scratch_cnn_learns_a_bright_blob():
    tensors = blob_tensors(n=120, size=64, seed=3)
    train_idx, val_idx = tensors.fold(0)
    result = train(tensors, train_idx, val_idx, TrainConfig(**{**FAST, "epochs": 4}))
    scores = evaluate_split(result.model, tensors, val_idx)
    assert scores.test.at_default.auc > 0.9


def test_evaluate_split_takes_threshold_from_validation(blobs):
    train_idx, val_idx = blobs.fold(0)
    result = train(blobs, train_idx, val_idx, TrainConfig(**FAST))
    scores = evaluate_split(result.model, blobs, val_idx)
    p_val = predict_proba(result.model, blobs.images[val_idx])
    assert scores.threshold == youden_threshold(blobs.labels[val_idx], p_val)
    assert scores.test.at_youden.threshold == scores.threshold
    assert scores.test.at_default.threshold == 0.5
    assert scores.test.at_default.n == len(blobs.split.test)
    flipped = TensorSet(**{**blobs.__dict__, "labels": blobs.labels.copy()})
    flipped.labels[blobs.split.test] ^= 1
    assert evaluate_split(result.model, flipped, val_idx).threshold == scores.threshold
    d = scores.to_dict(include_predictions=True)
    assert len(d["predictions"]["test"]["prob"]) == len(blobs.split.test)
    assert d["predictions"]["test"]["group"] == blobs.groups[blobs.split.test].tolist()
    assert d["predictions"]["val"]["group"] == blobs.groups[val_idx].tolist()
    json.dumps(d, allow_nan=False)


def test_config_errors_are_one_line_and_name_choices():
    with pytest.raises(UserError) as exc:
        TrainConfig.from_user(strategy="thaw", epochs=0, device="tpu")
    message = str(exc.value)
    assert "\n" not in message
    assert "strategy" in message and "finetune" in message
    assert "epochs" in message and "device" in message
    with pytest.raises(UserError, match="(?i)extra inputs"):
        TrainConfig.from_user(learning_rate=0.1)
    with pytest.raises(UserError, match="choose one of .*mobilenet_v2.*scratch_cnn"):
        TrainConfig.from_user(backbone="alexnet")
    with pytest.raises(
        UserError, match="'finetune' does not apply to scratch_cnn: choose one of full"
    ):
        TrainConfig.from_user(backbone="scratch_cnn", strategy="finetune")
    with pytest.raises(UserError, match="no ImageNet weights"):
        TrainConfig.from_user(backbone="scratch_cnn", weights="imagenet")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_with_bf16_autocast_and_checkpoint(blobs, tmp_path):
    config = TrainConfig(**{**FAST, "device": "cuda"})
    url = str(tmp_path / "checkpoint.pt")
    result = train(blobs, *blobs.fold(0), config, checkpoint_url=url)
    assert result.device.startswith("cuda")
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    scores = evaluate_split(result.model, blobs, blobs.fold(0)[1])
    assert scores.test is not None
    again = train(blobs, *blobs.fold(0), config, checkpoint_url=url)
    assert strip_seconds(again.history) == strip_seconds(result.history)
