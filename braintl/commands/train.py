"""``braintl train``: one model, one fold, from data to ``metrics.json``, ``model.pt`` and a
published-model package (``OUT/model/``, an ensemble of one) that ``braintl predict --model OUT``
scores with."""

from __future__ import annotations

import argparse
import io
import platform
import sys
import time

import torch

from braintl import __version__
from braintl.commands import train_data
from braintl.commands.output import print_json, table
from braintl.data.tensors import TensorSet
from braintl.errors import UserError
from braintl.metrics import json_safe
from braintl.models import HEADS, STRATEGIES, list_models, preload
from braintl.publish import MODEL_DIR, Member, package_info, write_package
from braintl.runclaim import new_run_id
from braintl.storage import resolve
from braintl.training import TRAINING_IMPORTS, TrainConfig, evaluate_split, train
from braintl.urls import check_locations

SCORES = ("accuracy", "precision", "recall", "specificity", "f1", "auc", "brier", "ece")


def register(p: argparse.ArgumentParser) -> None:
    model = p.add_argument_group("model and training")
    model.add_argument(
        "--backbone", default="scratch_cnn", help=f"one of {', '.join(list_models())}"
    )
    model.add_argument("--strategy", default="full", help=f"one of {', '.join(STRATEGIES)}")
    model.add_argument("--weights", default="none", help="imagenet, none, or a state-dict URL")
    model.add_argument("--head", default="paper", help=f"one of {', '.join(HEADS)}")
    model.add_argument("--head-units", type=int)
    model.add_argument("--dropout", type=float)
    model.add_argument("--epochs", type=int, default=18)
    model.add_argument("--batch-size", type=int, default=18)
    model.add_argument("--lr", type=float, default=1e-3)
    model.add_argument("--backbone-lr-factor", type=float, default=0.1)
    model.add_argument("--early-stopping", type=int, metavar="PATIENCE")
    model.add_argument("--fold", type=int, default=0, help="validation fold (default: 0)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    model.add_argument("--num-threads", type=int, help="torch CPU threads")
    train_data.add_args(p)
    p.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    config = TrainConfig.from_user(
        backbone=args.backbone,
        strategy=args.strategy,
        weights=args.weights,
        head=args.head,
        head_units=args.head_units,
        dropout=args.dropout,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        backbone_lr_factor=args.backbone_lr_factor,
        early_stopping_patience=args.early_stopping,
        seed=args.seed,
        device=args.device,
        num_threads=args.num_threads,
    )
    data_job = train_data.job(args)
    if not 0 <= args.fold < args.folds:
        raise UserError(f"--fold {args.fold}: choose 0..{args.folds - 1} (there are --folds)")
    check_locations(("--data", args.data), {"--out": args.out, "--cache": args.cache})
    log = sys.stderr if args.json else sys.stdout
    start = time.perf_counter()
    early = train_data.take()  # a process preparing the data since before torch's import
    claimed = early is not None and early.claim(data_job)
    preload(config.backbone, *TRAINING_IMPORTS)  # overlapping the data's preparation
    data_url, prepared = early.result() if claimed else data_job.run()
    tensors = TensorSet.load(prepared.tensors_url)
    train_idx, val_idx = tensors.fold(args.fold)
    data_seconds = time.perf_counter() - start
    print(
        f"data: {len(train_idx)} train / {len(val_idx)} val / {len(tensors.split.test)} test "
        f"images at {tensors.images.shape[-1]} px ({prepared.tensors_url})",
        file=log,
    )
    out = resolve(args.out)

    def progress(record: dict) -> None:
        auc = record["val_auc"]
        print(
            f"epoch {record['epoch']:>3}/{config.epochs}  stage {record['stage']}  "
            f"loss {record['train_loss']:.4f}  val loss {record['val_loss']:.4f}  "
            f"val AUC {auc if auc is None else f'{auc:.4f}'}  {record['seconds']:.1f}s",
            file=log,
            flush=True,
        )

    result = train(
        tensors,
        train_idx,
        val_idx,
        config,
        callback=progress,
        checkpoint_url=out.join("checkpoint.pt").url,
    )
    evaluation = evaluate_split(result.model, tensors, val_idx, prefix=result.prefix)
    metrics = json_safe(
        {
            **result.to_dict(),
            "evaluation": evaluation.to_dict(include_predictions=True),
            "data": {
                "url": data_url,
                "tensors_url": prepared.tensors_url,
                "fingerprint": prepared.manifest.fingerprint,
                "config": data_job.config.model_dump(),
                "fold": args.fold,
                "protocol": tensors.split.protocol,
                "leaky": tensors.split.leaky,
                "sizes": {
                    "train": len(train_idx),
                    "val": len(val_idx),
                    "test": len(tensors.split.test),
                },
            },
            "timings": {
                "data_seconds": data_seconds,  # waited for, after the imports when early
                "data_early": claimed,
                "train_seconds": result.seconds,
            },
            "versions": {
                "braintl": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        }
    )
    buffer = io.BytesIO()
    torch.save(result.model.state_dict(), buffer)
    out.join("model.pt").write_bytes(buffer.getvalue())
    out.join("metrics.json").write_json(metrics)
    package = _publish(args, out, result, metrics, prepared)
    if args.json:
        print_json(metrics | {"out": out.url, "model": package["model"]})
        return 0
    rows = []
    for part, scored in (("val", evaluation.val), ("test", evaluation.test)):
        for name, m in (("0.5", scored.at_default), ("youden", scored.at_youden)):
            values = m.to_dict()
            rows.append((part, name, *(values[s] for s in SCORES)))
    print()
    print(table(["part", "threshold", *SCORES], rows))
    print(
        f"\nbest epoch {result.best_epoch} (val AUC {result.best_val_auc:.4f}), stopped by "
        f"{result.stopped_by}, Youden threshold {evaluation.threshold:.3f} from validation"
    )
    print(f"written: {out.join('metrics.json').url}, {out.join('model.pt').url}")
    print(f"published model: {package['model']} (braintl predict --model {out.url} IMAGES)")
    return 0


def _publish(args, out, result, metrics: dict, prepared) -> dict[str, str]:
    """The package ``braintl run`` publishes, with this one model as its only member."""
    member = Member(
        result.model.state_dict(),
        {
            "fold": args.fold,
            "threshold": metrics["evaluation"]["youden_threshold_from_val"],
            "val_auc": metrics["evaluation"]["val"]["at_youden"]["auc"],
            "best_epoch": result.best_epoch,
            "source": {
                "model_url": out.join("model.pt").url,
                "metrics_url": out.join("metrics.json").url,
            },
        },
    )
    origin = {
        "run_id": f"train-{new_run_id()}",
        "run_url": out.url,
        "model": f"{result.config.backbone}/{result.config.strategy}",
        "cross_validation": None,
        "single_fold": True,
    }
    data = {
        "tensors_url": prepared.tensors_url,
        "fingerprint": prepared.manifest.fingerprint,
        "meta": {k: v for k, v in prepared.meta.items() if k != "files"},
    }
    info = package_info(origin, data, [metrics], [member])
    return write_package(out.join(MODEL_DIR), info, [member])
