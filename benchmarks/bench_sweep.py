"""The feature cache's gain in a Ray Tune sweep, apart from parallelism's.

Three frozen-strategy sweeps through :func:`braintl.tuning.run_sweep` on one backbone, at the
same concurrency, each on a fresh copy of the tensor cache:

- 8 trials with the feature cache (the first trials compute it, once per racing pair; every
  later one reuses it and trains only the head);
- the same 8 trials without it (``feature_cache=False``: every trial runs the frozen backbone
  on every batch): the cached/uncached ratio is the cache's gain alone;
- 1 trial with the cache: 8 against 1 shows what 8 trials cost over one, parallelism included.

ASHA is off by default (grace period = epochs), so no trial stops early; ``--asha`` turns it on
as the retrain flow runs it.

    python benchmarks/bench_sweep.py --data ../shared/data/brain_mri --backbone vgg16
    python benchmarks/bench_sweep.py --image-size 32 --epochs 2 --trials 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import ray
import torch
from machine import describe

from braintl.data.prepare import DataConfig, prepare
from braintl.data.tensors import TensorSet
from braintl.models import create_model
from braintl.models.calibrate import calibrate_batchnorm
from braintl.tuning import SweepConfig, ensure_ray, run_sweep

DEFAULT_OUT = Path(__file__).parent / "results" / "bench_sweep.json"
DEFAULT_DATA = os.path.join(os.environ.get("BRAINTL_DATA_DIR", "../shared/data"), "brain_mri")


def sweep(work: str, tensors: TensorSet, trials: int, cached: bool, base: dict, args) -> dict:
    """Time one sweep of ``trials`` trials on a fresh copy of the tensors (a cold cache)."""
    folder = os.path.join(work, f"sweep-{trials}-{'cached' if cached else 'uncached'}")
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
        base | {"feature_cache": cached},
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
        "feature_cache": cached,
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
    ensure_ray()  # started before any timing
    cached = sweep(work, tensors, args.trials, True, base, args)
    uncached = sweep(work, tensors, args.trials, False, base, args)
    one = sweep(work, tensors, 1, True, base, args)
    ray.shutdown()
    report = {
        "benchmark": "bench_sweep",
        **describe(load_before),
        "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "images": len(tensors)},
        "sweeps": [cached, uncached, one],
        "uncached_over_cached": uncached["seconds"] / cached["seconds"],
        "many_over_one": cached["seconds"] / one["seconds"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'case':>26} {'seconds':>8} {'epochs':>7} {'caches':>7}")
    for run in report["sweeps"]:
        case = f"{run['trials']} trials, {'cached' if run['feature_cache'] else 'uncached'}"
        print(f"{case:>26} {run['seconds']:8.1f} {run['epochs_run']:7d} {run['feature_caches']:7d}")
    print(
        f"\n{args.backbone} frozen, {len(tensors)} images at {args.image_size} px, "
        f"{args.epochs} epochs, {args.concurrency} trials at a time on {os.cpu_count()} CPUs: "
        f"the cache makes {args.trials} trials {report['uncached_over_cached']:.2f}× faster; "
        f"{args.trials} cached trials cost {report['many_over_one']:.2f}× one; load average "
        f"{load_before[0]:.1f} → {os.getloadavg()[0]:.1f}. JSON: {args.out}"
    )
    errors = [e for run in report["sweeps"] for e in run["errors"]]
    if errors:
        print("trial errors:", errors)


if __name__ == "__main__":
    main()
