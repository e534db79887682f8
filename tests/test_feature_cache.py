"""The frozen-prefix cache computes what the whole model computes, once, and shares it safely.

Small on purpose (48 phantoms at 32 px, two epochs, nothing to download): every backbone cut at
every block boundary, and training with and without the cache for ``frozen``, ``finetune`` and a
``progressive`` stage, compared logit by logit and metric by metric.

The weights are random with BatchNorm statistics measured on the images, as pretrained ones
would be (:mod:`braintl.models.calibrate`), so activations do not vanish through deep frozen
stacks. The cached and the whole path sum in different orders (the cache is filled in batches
of 64, training runs batches of 8; oneDNN's AVX2 and AVX-512 kernels differ again), and Adam's
near sign-like steps on gradients close to zero amplify such differences: in float32, two
epochs turned them into logits 0.05 apart on one CPU and not on another. So the paths are
compared trained in float64, where they start 2^-53 apart (measured after training: at most
4e-14 in a logit): losses, logits and calibration must agree to float32's unit roundoff, 2^-24,
a millionfold above that noise and far below what a wrong cut, row or random stream does
(1e-3 and more); metrics that count images (AUC, accuracy, confusion matrices) exactly.
Evaluation through the cache is checked at the summation-order bound of tests/tolerances.py,
and the float32 cut itself too.
One torch thread: on a busy shared machine two threads' spinning barriers run many times slower.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from tolerances import logit_tolerance

from braintl.data.tensors import TensorSet
from braintl.models import create_model, list_models
from braintl.models.calibrate import calibrate_batchnorm
from braintl.models.factory import feature_shape
from braintl.models.registry import get_entry
from braintl.models.strategies import apply_strategy, resolve_strategy
from braintl.storage import resolve
from braintl.training import TrainConfig, evaluate_split, train
from braintl.training.features import _inference_prefix, prefix_cache
from braintl.training.inference import EVAL_BATCH_SIZE, predict_logits

PRETRAINED = ("mobilenet_v2", "vgg16", "resnet50", "xception")
FEATURES_LOG = "braintl.training.features"
TRAINED = 2.0**-24  # float32's unit roundoff: how close float64-trained paths must stay


@pytest.fixture(scope="module")
def tensors(tensors_url) -> TensorSet:
    return TensorSet.load(tensors_url)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weights(tensors, tmp_path_factory):
    """``weights(name)``: the URL of a state dict with BatchNorm statistics of these images."""
    folder, made = tmp_path_factory.mktemp("weights"), {}

    def make(name: str) -> str:
        if name not in made:
            torch.manual_seed(0)
            model = calibrate_batchnorm(create_model(name, image_size=32), tensors.images)
            made[name] = str(folder / f"{name}.pt")
            torch.save(model.state_dict(), made[name])
        return made[name]

    return make


def _train(tensors: TensorSet, fold: int = 0, **options):
    """Train in float64 (model, cache and loss; see the module's docstring)."""
    config = TrainConfig(**{"epochs": 2, "batch_size": 8, "lr": 1e-4, "num_threads": 1, **options})
    train_idx, val_idx = tensors.fold(fold)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return train(tensors, train_idx, val_idx, config)
    finally:
        torch.set_default_dtype(default)


def _assert_same(cached, uncached, tensors: TensorSet) -> None:
    """Same history, same test logits, same validation and test metrics (float64 runs)."""
    assert cached.best_epoch == uncached.best_epoch
    for got, want in zip(cached.history, uncached.history, strict=True):
        assert got["stage"] == want["stage"]
        for key in ("train_loss", "val_loss"):
            assert got[key] == pytest.approx(want[key], rel=TRAINED, abs=TRAINED), key
        for key in ("val_auc", "val_acc"):
            assert got[key] == pytest.approx(want[key], abs=1e-9), key
    test = tensors.images[tensors.split.test]
    torch.testing.assert_close(
        predict_logits(cached.model, test),
        predict_logits(uncached.model, test),
        rtol=TRAINED,
        atol=TRAINED,
    )
    _, val_idx = tensors.fold(0)
    # Evaluation through the cache the run trained on scores the kept model as the whole does,
    # up to summation order (the cache was filled in other batches; see tolerances).
    if cached.prefix is not None:
        scored = np.concatenate([val_idx, tensors.split.test])
        tol = logit_tolerance(cached.model, tensors.images[scored])
        torch.testing.assert_close(
            cached.prefix.logits(cached.model, scored, EVAL_BATCH_SIZE),
            predict_logits(cached.model, tensors.images[scored]),
            rtol=0,
            atol=tol,
        )
        via_cache = evaluate_split(cached.model, tensors, val_idx, prefix=cached.prefix)
        direct = evaluate_split(cached.model, tensors, val_idx)
        for part in ("val_prob", "test_prob"):
            np.testing.assert_allclose(
                getattr(via_cache, part), getattr(direct, part), rtol=0, atol=tol / 4
            )
        assert via_cache.threshold == pytest.approx(direct.threshold, abs=tol / 4)
    scores = [
        _flat(evaluate_split(r.model, tensors, val_idx).to_dict()) for r in (cached, uncached)
    ]
    assert scores[0].keys() == scores[1].keys()
    for key, value in scores[0].items():
        want = scores[1][key]
        if isinstance(want, float):  # counts and ratios of counts equal; calibration close
            close = any(word in key for word in ("ece", "brier", "threshold"))
            want = (
                pytest.approx(want, rel=TRAINED, abs=TRAINED)
                if close
                else pytest.approx(want, abs=1e-9)
            )
        assert value == want, key


def _flat(tree, path: str = "") -> dict:
    """Nested metrics as {".val.at_youden.auc": value, ...}; lists (counts) stay whole."""
    if not isinstance(tree, dict):
        return {path: tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{path}.{key}").items()}


def _feature_dirs(tensors: TensorSet) -> set[str]:
    root = resolve(tensors.url).join("features")
    return set(root.fs.ls(root.path)) if root.exists() else set()


@pytest.mark.parametrize("name", list_models())
def test_blocks_in_order_are_the_backbone(name):
    """Cutting before any block and running the rest gives the model's own logits."""
    torch.manual_seed(0)
    model = create_model(name, image_size=32).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        whole = model(images)
        for start in range(len(model.spec.blocks) + 1):
            cut = model.forward_from(model.prefix(images, start), start)
            # The cut changes tensor layouts and with them oneDNN's summation order.
            tol = logit_tolerance(model, images)
            torch.testing.assert_close(cut, whole, rtol=0, atol=tol, msg=f"cut at {start}")
        # The feature cache sizes a whole-backbone prefix from the meta-device dry run.
        whole_prefix = model.prefix(images, len(model.spec.blocks))
        assert tuple(whole_prefix.shape[1:]) == feature_shape(get_entry(name), 32)


@pytest.mark.parametrize("name", PRETRAINED)
def test_float32_cache_scores_as_the_whole_model(tensors, weights, name):
    """On the CPU a float32 cache is filled channels_last (faster there): logits through it
    stay within the summation-order bound of the whole model's, and the model's weights are
    back in their own layout afterwards."""
    model = create_model(name, weights=weights(name), image_size=32)
    plan = resolve_strategy(model, "frozen")
    apply_strategy(model, plan)
    in_memory = TensorSet(**{**tensors.__dict__, "url": None})  # no files in the shared cache
    cache = prefix_cache(model, plan, in_memory, torch.device("cpu"), budget_mb=1024)
    assert all(p.is_contiguous() for p in model.parameters())
    index = np.arange(len(tensors))
    torch.testing.assert_close(
        cache.logits(model, index, EVAL_BATCH_SIZE),
        predict_logits(model, tensors.images),
        rtol=0,
        atol=logit_tolerance(model, tensors.images),
    )


@pytest.mark.parametrize("name", PRETRAINED)
def test_the_cache_pass_folds_batchnorm_in_a_copy(name):
    """The cache is filled by a copy of the prefix with each Conv+BatchNorm folded into one
    convolution (one pass less over every activation; the logits are checked above); the
    model keeps its own modules."""
    model = create_model(name, image_size=32).eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    prefix, _ = _inference_prefix(model, len(model.spec.blocks), torch.device("cpu"))
    left = [m for m in prefix.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(left) <= len(norms) // 10
    assert [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == norms


@pytest.mark.parametrize("strategy", ["frozen", "finetune"])
@pytest.mark.parametrize("name", PRETRAINED)
def test_cached_training_equals_uncached(tensors, weights, name, strategy, caplog):
    options = {"backbone": name, "strategy": strategy, "weights": weights(name)}
    uncached = _train(tensors, feature_cache=False, **options)
    with caplog.at_level(logging.INFO, logger=FEATURES_LOG):
        cached = _train(tensors, **options)
    assert f"feature cache ({name} blocks" in caplog.text and "in memory" in caplog.text
    assert cached.prefix is not None and uncached.prefix is None
    _assert_same(cached, uncached, tensors)


def test_progressive_stages_each_get_their_cache(tensors, weights, caplog):
    options = {"backbone": "mobilenet_v2", "strategy": "progressive", "epochs": 3}
    options["weights"] = weights("mobilenet_v2")
    options["progressive_epochs_per_stage"] = 1  # stage 2 begins after epoch 1
    uncached = _train(tensors, feature_cache=False, **options)
    with caplog.at_level(logging.INFO, logger=FEATURES_LOG):
        cached = _train(tensors, **options)
    assert [r["stage"] for r in cached.history][:2] == [1, 2]
    assert "blocks 1-7" in caplog.text and "blocks 1-6" in caplog.text  # one cache per stage
    _assert_same(cached, uncached, tensors)


def test_full_training_has_no_prefix_to_cache(tensors, caplog):
    with caplog.at_level(logging.INFO, logger=FEATURES_LOG):
        _train(tensors, backbone="scratch_cnn", strategy="full", epochs=1)
    assert "feature cache" not in caplog.text


def test_one_cache_serves_every_fold_and_a_partial_one_is_never_read(
    tmp_path, tensors, weights, caplog
):
    local = tmp_path / "cache" / "key"
    TensorSet.save(tensors, str(local))
    copy = TensorSet.load(str(local))
    options = {"backbone": "mobilenet_v2", "strategy": "frozen", "weights": weights("mobilenet_v2")}
    first = _train(copy, **options)
    (folder,) = _feature_dirs(copy)
    assert os.path.exists(os.path.join(folder, "_COMPLETE.json"))
    with caplog.at_level(logging.INFO, logger=FEATURES_LOG):
        _train(copy, fold=1, **options)
    assert "reused, in memory" in caplog.text and _feature_dirs(copy) == {folder}

    # A writer that died before its marker: the array is there but must never be read.
    os.remove(os.path.join(folder, "_COMPLETE.json"))
    features = np.load(os.path.join(folder, "features.npy"))
    np.save(os.path.join(folder, "features.npy"), np.zeros_like(features))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=FEATURES_LOG):
        again = _train(copy, **options)
    assert "computed, in memory" in caplog.text
    _assert_same(again, first, tensors)
    np.testing.assert_array_equal(np.load(os.path.join(folder, "features.npy")), features)


def test_over_budget_streams_from_local_disk(tensors, weights, caplog):
    options = {"backbone": "mobilenet_v2", "strategy": "finetune"}
    options["weights"] = weights("mobilenet_v2")  # its cache: 0.03 MB
    in_memory = _train(tensors, **options)
    with caplog.at_level(logging.INFO, logger=FEATURES_LOG):
        streamed = _train(tensors, feature_memory_budget_mb=0.01, **options)
    assert "exceeds the 0.01 MB budget: streaming it from disk" in caplog.text
    _assert_same(streamed, in_memory, tensors)


def test_s3_cache_is_shared_and_over_budget_recomputes(s3_bucket, tensors, weights, caplog):
    url = f"{s3_bucket}/out/cache/key"
    TensorSet.save(tensors, url)
    remote = TensorSet.load(url)
    options = {
        "backbone": "mobilenet_v2",
        "strategy": "finetune",
        "weights": weights("mobilenet_v2"),
    }
    local = _train(tensors, **options)
    stored = _train(remote, **options)
    (folder,) = _feature_dirs(remote)
    assert resolve(f"s3://{folder}").is_complete()
    with caplog.at_level(logging.INFO, logger=FEATURES_LOG):
        recomputed = _train(remote, feature_memory_budget_mb=0.001, **options)
    assert "recomputing the frozen prefix every batch" in caplog.text
    _assert_same(stored, local, tensors)
    _assert_same(recomputed, local, tensors)
