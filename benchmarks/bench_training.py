"""braintl's training path against a naive one, side by side on the same machine and data.

For each backbone × strategy (``frozen`` and ``finetune``; ``full`` for the scratch CNN), one
N-epoch training run on fold 0, timed both ways with the same hyperparameters and seed:

- **braintl**: :func:`braintl.training.train` on the uint8 tensor cache (decoded once, by
  ``prepare``, timed separately) with the frozen-prefix feature cache, computed in the run (cold:
  a fresh copy of the tensors per run, so the run pays for computing it). That copy holds only
  the run's training and validation images, the ones the naive loop reads: in a real sweep the
  cache also covers the test and other folds' images, computed once for all of them.
- **naive**: what a Keras-style script does. A torch ``DataLoader`` over the JPEG files that
  decodes every image every epoch with PIL and torchvision transforms (pad to a square, bicubic
  resize), the whole model (frozen backbone included) run every batch, validation likewise.

Each run happens in a fresh process of its own (spawned), so neither inherits the other's
process-wide state: braintl's ``train()`` switches glibc to reusing freed memory
(:mod:`braintl.training.host_memory`), which a plain script does not do. ``--naive-malloc
reuse`` gives the naive loop that same setting, to show how much of the ratio it accounts for.

Weights: no ImageNet download here, so random weights with BatchNorm statistics measured on the
training images (:mod:`braintl.models.calibrate`), the same for both paths. Final validation
AUC and accuracy of both are reported side by side; the two loops draw different shuffles and
dropout masks, so on a few dozen validation images they differ by chance. That the cached path
computes what the uncached one does is proven in ``tests/test_feature_cache.py``.

    python benchmarks/bench_training.py --data ../shared/data/brain_mri --image-size 64
    python benchmarks/bench_training.py --image-size 32 --epochs 3 --limit 60 --models mobilenet_v2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from braintl.data.prepare import DataConfig, prepare
from braintl.data.tensors import ARRAYS, Split, TensorSet
from braintl.metrics import evaluate
from braintl.models import apply_strategy, create_model, list_models, list_strategies
from braintl.models.calibrate import calibrate_batchnorm
from braintl.models.strategies import resolve_strategy
from braintl.training import TrainConfig, train
from braintl.training.host_memory import reuse_freed_memory

DEFAULT_OUT = Path(__file__).parent / "results" / "bench_training.json"
DEFAULT_DATA = os.path.join(os.environ.get("BRAINTL_DATA_DIR", "../shared/data"), "brain_mri")


def strategies_of(name: str) -> tuple[str, ...]:
    return tuple(s for s in ("frozen", "finetune") if s in list_strategies(name)) or ("full",)


class JpegFolder(Dataset):
    """(uint8 3×S×S image, label) decoded from its file on every access."""

    def __init__(self, paths: list[str], labels: np.ndarray, size: int):
        self.paths, self.labels = paths, labels
        self.transform = transforms.Compose(
            [
                transforms.Lambda(_pad_to_square),
                transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.PILToTensor(),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), float(self.labels[i])


def _pad_to_square(image: Image.Image) -> Image.Image:
    side = max(image.size)
    square = Image.new("RGB", (side, side))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


def naive_run(
    config: TrainConfig,
    files: list[str],
    tensors_url: str,
    train_idx,
    val_idx,
    workers: int,
    malloc: str,
) -> dict:
    """The Keras-style loop: decode every epoch, run the whole model every batch."""
    if malloc == "reuse":
        reuse_freed_memory()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    tensors = TensorSet.load(tensors_url)
    size = tensors.images.shape[-1]
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    model = create_model(config.backbone, weights=config.weights, image_size=size)
    plan = resolve_strategy(model, config.strategy)
    apply_strategy(model, plan)
    groups = plan.param_groups(model, config.lr, config.backbone_lr_factor)
    optimizer = torch.optim.Adam(groups)
    loss_fn = nn.BCEWithLogitsLoss()

    def loader(idx, shuffle):
        data = JpegFolder([files[i] for i in idx], tensors.labels[idx], size)
        generator = torch.Generator().manual_seed(config.seed)
        return DataLoader(
            data,
            batch_size=config.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=workers,
        )

    train_loader, val_loader = loader(train_idx, True), loader(val_idx, False)
    history = []
    for _ in range(config.epochs):
        model.train()
        for x, y in train_loader:
            if len(x) < 2:  # BatchNorm cannot train on one image, as in braintl's loop
                continue
            loss = loss_fn(model(x), y.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            batches = [(model(x), y) for x, y in val_loader]
        logits = torch.cat([b[0] for b in batches])
        labels = torch.cat([b[1] for b in batches]).numpy().astype(np.int64)
        scores = evaluate(labels, torch.sigmoid(logits).numpy())
        history.append({"val_auc": scores.auc, "val_acc": scores.accuracy})
    return {"seconds": time.perf_counter() - started, "history": history}


def subset(tensors: TensorSet, train_idx, val_idx) -> TensorSet:
    """Only the training images then the validation images, as one validation fold."""
    index = np.concatenate([train_idx, val_idx])
    folds = (np.arange(len(train_idx), len(index)),)
    split = Split(tensors.split.protocol, np.empty(0, np.int64), folds, tensors.split.leaky)
    arrays = {name: getattr(tensors, name)[index] for name in ARRAYS}
    return TensorSet(split=split, meta=tensors.meta, **arrays)


def braintl_run(config: TrainConfig, tensors_url: str, n_train: int) -> dict:
    """``train`` on a tensor set holding the training images first, then the validation ones."""
    tensors = TensorSet.load(tensors_url)
    started = time.perf_counter()
    index = np.arange(len(tensors))
    result = train(tensors, index[:n_train], index[n_train:], config)
    seconds = time.perf_counter() - started
    # The final epoch's model, as the naive loop ends with it (train() keeps the best one).
    history = [{"val_auc": r["val_auc"], "val_acc": r["val_acc"]} for r in result.history]
    return {"seconds": seconds, "history": history}


def in_fresh_process(function, *args) -> dict:
    """``function(*args)`` in a newly spawned interpreter, which exits afterwards."""
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(function, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with yes/ and no/ JPEGs")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--batch-size", type=int, default=18)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, default=None, help="at most this many train images")
    parser.add_argument("--models", nargs="*", default=list_models())
    parser.add_argument("--threads", type=int, default=None, help="torch threads (both paths)")
    parser.add_argument("--workers", type=int, default=0, help="naive DataLoader workers")
    parser.add_argument(
        "--naive-malloc",
        choices=("default", "reuse"),
        default="default",
        help="the naive loop's allocator: a plain script's, or braintl's reuse of freed memory",
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="bench-training-")
    started = time.perf_counter()
    data_config = DataConfig(preprocess={"image_size": args.image_size}, augment={"enabled": False})
    prepared = prepare(args.data, work, data_config)
    prepare_seconds = time.perf_counter() - started
    tensors = TensorSet.load(prepared.tensors_url)
    root = prepared.manifest.root
    files = [os.path.join(root, name) for name in tensors.meta["files"]]
    train_idx, val_idx = tensors.fold(0)
    train_idx = train_idx[: args.limit] if args.limit else train_idx
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, image_size=args.image_size)
        weights = os.path.join(work, f"{name}.pt")
        torch.save(
            calibrate_batchnorm(model, tensors.images[train_idx]).backbone.state_dict(), weights
        )
        for strategy in strategies_of(name):
            config = TrainConfig(
                backbone=name,
                strategy=strategy,
                weights=weights,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                num_threads=args.threads,
            )
            # A fresh copy of the tensors per run, so every braintl run computes its cache.
            fresh = os.path.join(work, f"run-{name}-{strategy}")
            subset(tensors, train_idx, val_idx).save(fresh)
            ours = in_fresh_process(braintl_run, config, fresh, len(train_idx))
            naive = in_fresh_process(
                naive_run,
                config,
                files,
                prepared.tensors_url,
                train_idx,
                val_idx,
                args.workers,
                args.naive_malloc,
            )
            images = args.epochs * (len(train_idx) + len(val_idx))
            row = {
                "backbone": name,
                "strategy": strategy,
                "braintl_s": ours["seconds"],
                "naive_s": naive["seconds"],
                "speedup": naive["seconds"] / ours["seconds"],
                "braintl_img_s": images / ours["seconds"],
                "naive_img_s": images / naive["seconds"],
                "braintl_val": ours["history"][-1],
                "naive_val": naive["history"][-1],
            }
            rows.append(row)
            print(_line(row), flush=True)
            _write(args, rows, len(train_idx), len(val_idx), prepare_seconds, load_before)
    print(
        f"\n{len(train_idx)} train + {len(val_idx)} val images at {args.image_size} px, "
        f"{args.epochs} epochs, batch {args.batch_size}; tensor cache built once in "
        f"{prepare_seconds:.1f} s; load average {load_before[0]:.1f} → {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs (shared machine). JSON: {args.out}"
    )


def _write(args, rows, n_train, n_val, prepare_seconds, load_before) -> None:
    """The JSON report so far: rewritten after every row, so a cut-short run keeps its rows."""
    report = {
        "benchmark": "bench_training",
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("out", "models")},
            "models": args.models,
            "train_images": n_train,
            "val_images": n_val,
            "weights": "random, BatchNorm statistics calibrated on the training images",
        },
        "prepare_seconds": prepare_seconds,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "note": "shared machine: other engineers' jobs ran at the same time",
        },
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


def _line(row: dict) -> str:
    return (
        f"{row['backbone']:>13} {row['strategy']:>9}  braintl {row['braintl_s']:7.1f} s "
        f"({row['braintl_img_s']:7.1f} img/s)  naive {row['naive_s']:7.1f} s "
        f"({row['naive_img_s']:6.1f} img/s)  ×{row['speedup']:5.1f}  final val AUC "
        f"{row['braintl_val']['val_auc']:.3f} / {row['naive_val']['val_auc']:.3f}  acc "
        f"{row['braintl_val']['val_acc']:.3f} / {row['naive_val']['val_acc']:.3f}"
    )


if __name__ == "__main__":
    main()
