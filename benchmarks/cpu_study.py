"""The study behind the ``cpu`` profile: which image size, crop, augmentation and epochs give the
best validation AUC, and what every model costs, on a 2-core machine without a GPU.

Validation data only: every candidate trains on fold 0's training part and is scored on fold 0
(the sweep's tuning fold, with the run's split: ``--folds`` folds, 15% held-out test); the test
set and any outside set are never read.

1. **Settings.** Each candidate data setting (image size, brain crop) is trained on
   ``scratch_cnn`` (full) and MobileNetV2 (frozen, fine-tuned) for 18 epochs. Offline
   augmentation multiplies the training images by 8.2 (the seed's 2062/251), so an augmented
   epoch costs as much as 8 plain ones: it is tried at the smaller size without crop. Fewer
   epochs are read off the same run: there is no learning-rate schedule and the best epoch by
   validation AUC is kept, so the best of the first E epochs *is* the E-epoch run's result.
2. **Cost.** Every (backbone, strategy) pair the run trains is timed for two epochs at each
   candidate's size and augmentation; ``seconds + (E - 2) × epoch_s`` projects any epoch
   budget E (``setup_s``: model build and the frozen-prefix feature pass). ``cpu_s`` beside
   ``seconds`` shows how much of the wall time the machine's other load took.

Models train two at a time, one torch thread each, as the run's trials and folds do
(``cpus_per_trial`` 1 on 2 cores). No ImageNet weights can be downloaded here, so pretrained
backbones start from random weights (``none``): their cost is what ImageNet weights cost, their
AUCs are not transfer learning. The settings are therefore chosen on ``scratch_cnn``, the one
model whose figures here are what a user gets; the stand-ins' AUCs are reported, not used.

    python benchmarks/size_split.py ../shared/data/brain_mri /tmp/cpu-split
    python benchmarks/cpu_study.py --data /tmp/cpu-split/development
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from machine import describe

from braintl.data.prepare import DataConfig, prepare
from braintl.data.tensors import TensorSet
from braintl.training import TrainConfig, train
from flows.params import RetrainParams

DEFAULT_OUT = Path(__file__).parent / "results" / "cpu_study.json"
BENCH_RUN = Path(__file__).parent / "results" / "bench_run.json"  # a quick run's orchestration
PAIRS = RetrainParams().pairs()  # every (backbone, strategy) a run trains
SETTINGS_MODELS = (
    ("scratch_cnn", "full"),
    ("mobilenet_v2", "frozen"),
    ("mobilenet_v2", "finetune"),
)
CHOOSING_MODEL = "scratch_cnn/full"
# (image size, crop, augment, epochs, models): the data settings compared, each at its budget.
CANDIDATES = (
    *((size, crop, False, 18, SETTINGS_MODELS) for size in (96, 128) for crop in (False, True)),
    (96, False, True, 18, SETTINGS_MODELS),
)
TIMING_EPOCHS = 2
READ_OFF = (4, 8, 12, 18)  # epoch budgets read off each candidate's history (up to its own)


def data_config(args, size: int, crop: bool, augment: bool) -> DataConfig:
    return DataConfig(
        folds=args.folds,
        seed=0,
        preprocess={"image_size": size, "crop": crop},
        augment={"enabled": augment},
    )


def fit(job: dict) -> dict:
    """Train one model on fold 0 with one thread; its validation history and timings."""
    torch.set_num_threads(1)
    tensors = TensorSet.load(job["tensors_url"])
    train_idx, val_idx = tensors.fold(0)
    config = TrainConfig(
        backbone=job["backbone"],
        strategy=job["strategy"],
        weights="none",
        epochs=job["epochs"],
        batch_size=16,
        lr=1e-3,
        seed=0,
        device="cpu",
        num_threads=1,
    )
    cpu_started = time.process_time()
    result = train(tensors, train_idx, val_idx, config)
    cpu_s = time.process_time() - cpu_started
    epochs = [record["seconds"] for record in result.history]
    aucs = [record["val_auc"] for record in result.history]
    return {
        **{k: v for k, v in job.items() if k != "tensors_url"},
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "seconds": result.seconds,
        "cpu_s": cpu_s,
        # Everything but the steady epochs: model build, the frozen-prefix pass (epoch 1).
        "setup_s": result.seconds - len(epochs) * epochs[-1],
        "epoch_s": epochs[-1],
        "val_auc_by_epoch": aucs,
    }


def best_within(aucs: list, epochs: int) -> float | None:
    """The E-epoch run's validation AUC: its best epoch's (see the module docstring); None
    beyond the candidate's own budget."""
    scores = [a for a in aucs[:epochs] if a is not None]
    return max(scores) if scores and epochs <= len(aucs) else None


def project(cost: list[dict], size: int, augment: bool, plan: dict, run: dict) -> dict:
    """A whole run's wall time for ``plan`` (epochs, folds, samples), from the timed pairs at
    ``size`` and ``augment`` and the orchestration ``bench_run`` measured (``run``).

    Every trial and fold is counted as training all its epochs (ASHA stops some trials early,
    so the sweep's share is an upper bound); the set-up is paid once per pair (the frozen-prefix
    cache is shared by every trial and fold of a backbone); a fold's training part grows with
    the folds (k-1 of k), and its epochs with it. Two trainings at a time, as on 2 cores.
    External validation is not in.
    """
    rows = [r for r in cost if r["image_size"] == size and r["augment"] == augment]
    n_dev = rows[0]["n_train"] + rows[0]["n_val"]  # at the study's folds, fold 0
    growth = n_dev * (plan["folds"] - 1) / plan["folds"] / rows[0]["n_train"]
    setup = sum(max(r["setup_s"], 0) for r in rows)
    epochs = sum(plan["epochs"] * r["epoch_s"] * growth for r in rows)
    trials, folds = len(rows) * plan["samples"], len(rows) * (plan["folds"] - 1)
    stages = {s["stage"]: s for s in run["stages"]}
    training_stages = ("sweep", "cross")
    fixed = sum(s["wall_s"] for n, s in stages.items() if not n.startswith(training_stages))
    per_trial = sum(s["orchestration_s"] for n, s in stages.items() if n.startswith("sweep"))
    per_trial /= run["counts"]["trials"]
    per_fold = stages["cross-validation"]["orchestration_s"] / run["counts"]["folds"]
    training = (setup + epochs * (plan["samples"] + plan["folds"] - 1)) / 2
    wall = fixed + training + trials * per_trial + folds * per_fold
    return {
        "image_size": size,
        "augment": augment,
        **plan,
        "trials": trials,
        "folds_trained": folds,
        "training_s": training,
        "orchestration_s": wall - training,
        "wall_s": wall,
    }


def projections(cost: list[dict]) -> list[dict]:
    run = json.loads(BENCH_RUN.read_text())
    return [
        project(cost, size, augment, {"epochs": e, "folds": k, "samples": n}, run)
        for size, augment in sorted({(r["image_size"], r["augment"]) for r in cost})
        for e in (8, 12, 18)
        for k in (3, 5)
        for n in (1, 2, 4)
    ]


def run_jobs(jobs: list[dict], workers: int) -> list[dict]:
    rows = []
    with ProcessPoolExecutor(workers) as pool:
        for row in pool.map(fit, jobs):
            print(
                f"{row['backbone']}/{row['strategy']} {row['image_size']} px crop={row['crop']} "
                f"augment={row['augment']}, {row['epochs']} epochs: {row['seconds']:.0f} s "
                f"(cpu {row['cpu_s']:.0f} s), val AUC by epoch {row['val_auc_by_epoch']}",
                flush=True,
            )
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the development scans (label folders)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="models trained at once")
    parser.add_argument("--skip-cost", action="store_true", help="settings only")
    parser.add_argument("--work", help="folder for the tensor caches (default: a new one)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument(
        "--project-only", action="store_true", help="recompute the projections of --out's JSON"
    )
    args = parser.parse_args()
    if args.project_only:
        report = json.loads(Path(args.out).read_text())
        report["projections"] = projections(report["cost"])
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        return
    load_before = os.getloadavg()
    started = time.perf_counter()
    work = args.work or tempfile.mkdtemp(prefix="cpu-study-")
    caches: dict[tuple, dict] = {}
    for size, crop, augment, _, _ in CANDIDATES:
        t0 = time.perf_counter()
        prepared = prepare(args.data, work, data_config(args, size, crop, augment))
        caches[(size, crop, augment)] = {
            "tensors_url": prepared.tensors_url,
            "prepare_s": time.perf_counter() - t0,
        }
        print(f"prepared {size} px crop={crop} augment={augment}", flush=True)

    jobs = [
        {
            "image_size": size,
            "crop": crop,
            "augment": augment,
            "backbone": backbone,
            "strategy": strategy,
            "epochs": epochs,
            "tensors_url": caches[(size, crop, augment)]["tensors_url"],
        }
        for size, crop, augment, epochs, models in CANDIDATES
        for backbone, strategy in models
    ]
    jobs.sort(key=lambda j: (not j["augment"], -j["image_size"]))  # longest first
    settings = run_jobs(jobs, args.workers)
    for row in settings:
        row["val_auc"] = {e: best_within(row["val_auc_by_epoch"], e) for e in READ_OFF}

    cost = []
    if not args.skip_cost:
        timed = sorted({(size, augment) for size, _, augment, *_ in CANDIDATES})
        cost_jobs = [
            {
                "image_size": size,
                "crop": False,
                "augment": augment,
                "backbone": backbone,
                "strategy": strategy,
                "epochs": TIMING_EPOCHS,
                "tensors_url": caches[(size, False, augment)]["tensors_url"],
            }
            for size, augment in timed
            for backbone, strategy in PAIRS
        ]
        cost = run_jobs(cost_jobs, args.workers)

    report = {
        "benchmark": "cpu_study",
        "data": args.data,
        "folds": args.folds,
        "validation": "fold 0 of the development set (the sweep's tuning fold); no test data",
        "weights": "none (random-initialised stand-ins for the pretrained backbones)",
        "choosing_model": CHOOSING_MODEL,
        "threads_per_model": 1,
        "models_at_once": args.workers,
        "prepare_s": {
            f"{size}px crop={crop} augment={augment}": round(c["prepare_s"], 1)
            for (size, crop, augment), c in caches.items()
        },
        "settings": settings,
        "cost": cost,
        "projections": projections(cost) if cost else [],
        "study_wall_s": time.perf_counter() - started,
        **describe(load_before),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"study: {report['study_wall_s']:.0f} s; JSON: {args.out}")


if __name__ == "__main__":
    main()
