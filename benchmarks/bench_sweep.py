"""A frozen-strategy Ray Tune sweep of 8 trials against one trial, on one backbone.

Both run through :func:`braintl.tuning.run_sweep` on the same tensors, each with a fresh copy
of the tensor cache, so each pays for computing the frozen-prefix feature cache once (twice when
two trials start together and race; neither ever reads a half-written cache). Every later trial
reuses it and trains only the head. Without the cache, 8 trials cost about 8 times one.

ASHA is off by default (grace period = epochs), so the saving shown is the cache's alone, not
early stopping's; ``--asha`` turns it on as the retrain flow runs it.

    python benchmarks/bench_sweep.py --data ../shared/data/brain_mri --backbone vgg16
    python benchmarks/bench_sweep.py --image-size 32 --epochs 3 --trials 4   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import ray
import torch

from braintl.data.prepare import DataConfig, prepare
from braintl.data.tensors import TensorSet
from braintl.models import create_model
from braintl.models.calibrate import calibrate_batchnorm
from braintl.tuning import SweepConfig, ensure_ray, run_sweep

DEFAULT_OUT = Path(__file__).parent / "results" / "bench_sweep.json"
DEFAULT_DATA = os.path.join(os.environ.get("BRAINTL_DATA_DIR", "../shared/data"), "brain_mri")


def sweep(work: str, tensors: TensorSet, trials: int, base: dict, args) -> dict:
    """Time one sweep of ``trials`` trials on a fresh copy of the tensors (a cold cache)."""
    folder = os.path.join(work, f"sweep-{trials}")
    tensors.save(os.path.join(folder, "tensors"))
    config = SweepConfig(
        num_samples=trials,
        batch_size_choices=(args.batch_size,),
        grace_period=1 if args.asha else args.epochs,
        max_concurrent_trials=args.concurrency,
        cpus_per_trial=args.cpus_per_trial,
    )
    started = time.perf_counter()
    summary = run_sweep(
        os.path.join(folder, "tensors"),
        [(args.backbone, "frozen")],
        base,
        config,
        os.path.join(folder, "storage"),
    )
    seconds = time.perf_counter() - started
    epochs = sum(t["epochs_run"] for t in summary["trials"])
    errors = [t["error"] for t in summary["trials"] if t["error"]]
    features = os.path.join(folder, "tensors", "features")
    caches = os.listdir(features) if os.path.isdir(features) else []
    return {
        "trials": trials,
        "seconds": seconds,
        "epochs_run": epochs,
        "errors": errors,
        "feature_caches": len(caches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with yes/ and no/ JPEGs")
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--batch-size", type=int, default=18)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--augment", action="store_true", help="the seed's augmented set")
    parser.add_argument("--asha", action="store_true", help="let ASHA stop weak trials")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--cpus-per-trial", type=float, default=1)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="bench-sweep-")
    data_config = DataConfig(
        preprocess={"image_size": args.image_size}, augment={"enabled": args.augment}
    )
    tensors = TensorSet.load(prepare(args.data, work, data_config).tensors_url)
    torch.manual_seed(0)
    weights = os.path.join(work, f"{args.backbone}.pt")
    model = create_model(args.backbone, image_size=args.image_size)
    torch.save(calibrate_batchnorm(model, tensors.images).backbone.state_dict(), weights)
    base = {"epochs": args.epochs, "weights": weights, "seed": 0}
    ensure_ray()  # started before either timing
    one = sweep(work, tensors, 1, base, args)
    many = sweep(work, tensors, args.trials, base, args)
    ray.shutdown()
    ratio = many["seconds"] / one["seconds"]
    report = {
        "benchmark": "bench_sweep",
        "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "images": len(tensors)},
        "one_trial": one,
        "sweep": many,
        "ratio_to_one_trial": ratio,
        "naive_estimate_s": args.trials * one["seconds"],
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "note": "shared machine: other engineers' jobs ran at the same time",
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{'case':>22} {'seconds':>8} {'epochs':>7} {'caches':>7}")
    print(
        f"{'1 trial':>22} {one['seconds']:8.1f} {one['epochs_run']:7d} {one['feature_caches']:7d}"
    )
    print(
        f"{f'{args.trials} trials (sweep)':>22} {many['seconds']:8.1f} {many['epochs_run']:7d} "
        f"{many['feature_caches']:7d}"
    )
    print(f"{f'{args.trials} × 1 trial':>22} {args.trials * one['seconds']:8.1f}")
    print(
        f"\n{args.backbone} frozen, {len(tensors)} images at {args.image_size} px, "
        f"{args.epochs} epochs, {args.concurrency} trials at a time on {os.cpu_count()} CPUs: "
        f"{args.trials} trials cost {ratio:.2f}× one trial; load average {load_before[0]:.1f} → "
        f"{os.getloadavg()[0]:.1f} (shared machine). JSON: {args.out}"
    )
    if one["errors"] or many["errors"]:
        print("trial errors:", one["errors"] + many["errors"])


if __name__ == "__main__":
    main()
