"""``braintl train`` against a plain torchvision script, each timed as a user meets it.

Frozen MobileNetV2, fold 0, the same images, epochs, batch size, learning rate and starting
weights on both sides. Every run is a fresh ``python`` process timed from start to exit, cold:
imports, model build, decoding (braintl: into a new tensor cache, no earlier one to reuse), the
feature pass, training, evaluation, writing results. Next to that whole-process time, each side's
training-only time (model build, feature pass and the epochs: ``train()``'s ``seconds`` for
braintl, the same span timed inside the script for the naive one).

- **braintl**: ``python -m braintl.cli train --backbone mobilenet_v2 --strategy frozen ...``,
  with its defaults (offline augmentation on unless ``--no-augment``).
- **naive** (``naive_train.py``): ImageFolder and a DataLoader decoding every file every epoch,
  the frozen backbone run on every batch, scikit-learn's AUC. With augmentation, the training
  set holds the same number of entries as braintl's, the copies augmented online by torchvision.
  Two variants: ``plain`` (torch's and glibc's defaults, as a script has them) and ``settings``
  (braintl's process settings: allocator, subnormal flushing, fused Adam, evaluation batch 64).

Weights: no ImageNet download here, so random weights with BatchNorm statistics measured on the
training images (:mod:`braintl.models.calibrate`), one file both sides load. The set-up (listing
the split, calibrating) runs before any clock starts.

The naive side takes many times braintl's. ``--sides braintl --naive-from EARLIER.json`` times
braintl's side again (after a change to braintl) against the naive runs of an earlier result
with the same settings (the naive script imports nothing from braintl); the JSON keeps those
runs with the date and load they were measured at, under ``naive_from``.

    python benchmarks/bench_training.py --data ../shared/data/brain_mri
    python benchmarks/bench_training.py --image-size 32 --epochs 2 --no-augment   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import describe

from braintl.cli import build_parser
from braintl.commands.data import config_from_args
from braintl.data.prepare import prepare
from braintl.data.tensors import TensorSet
from braintl.models import create_model
from braintl.models.calibrate import calibrate_batchnorm
from braintl.training.host_memory import KEEP_FREE_MB

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_training.json"
SIDES = ("braintl", "naive-plain", "naive-settings")
DEFAULT_DATA = os.path.join(os.environ.get("BRAINTL_DATA_DIR", "../shared/data"), "brain_mri")
BACKBONE = "mobilenet_v2"
# glibc's environment names for what braintl.training.host_memory sets with mallopt.
BRAINTL_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(KEEP_FREE_MB << 20)}


def train_args(args, out: str, weights: str) -> list[str]:
    """``braintl train``'s arguments for this comparison."""
    flags = ["train", "--data", args.data, "--out", out, "--backbone", BACKBONE]
    flags += ["--strategy", "frozen", "--weights", weights, "--epochs", str(args.epochs)]
    flags += ["--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    flags += ["--image-size", str(args.image_size), "--fold", "0", "--json"]
    return flags + ([] if args.augment else ["--no-augment"])


def set_up(args, work: str) -> tuple[str, str, str]:
    """The tensor cache key ``braintl train`` will build, the naive split file (fold 0's
    images by path) and the calibrated weights file, made before any timing."""
    parsed = build_parser().parse_args(train_args(args, work, "none"))
    config = config_from_args(
        parsed,
        preprocess={"image_size": args.image_size, "crop": False},
        augment={"enabled": args.augment},
    )
    prepared = prepare(args.data, os.path.join(work, "setup"), config)
    tensors = TensorSet.load(prepared.tensors_url)
    files = tensors.meta["files"]
    train_idx, val_idx = tensors.fold(0)
    original = {}  # (group, label) -> an original image of it, the source of its copies
    for i in range(len(tensors)):
        if not tensors.augmented[i]:
            original.setdefault((tensors.groups[i], tensors.labels[i]), i)
    split = {
        "train": [files[i] for i in train_idx if not tensors.augmented[i]],
        "copies": [
            files[original[(tensors.groups[i], tensors.labels[i])]]
            for i in train_idx
            if tensors.augmented[i]
        ],
        "val": [files[i] for i in val_idx],
    }
    split_path = os.path.join(work, "split.json")
    Path(split_path).write_text(json.dumps(split))
    torch.manual_seed(0)
    model = create_model(BACKBONE, image_size=args.image_size)
    calibrate_batchnorm(model, tensors.images[train_idx])
    weights = os.path.join(work, f"{BACKBONE}.pt")
    torch.save(model.backbone.state_dict(), weights)
    return prepared.key, split_path, weights


def timed(cmd: list[str], env: dict, echo: bool) -> tuple[float, float, str]:
    """Wall time of ``cmd`` from start to exit, the CPU seconds it and its children (the
    naive DataLoader's workers) used, and its stdout. CPU time is what the process needed,
    close to unchanged by the load on a shared machine; wall time is what a user waits. With
    ``echo``, each line of stdout goes to stderr as it comes, so a long run shows its pace."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    lines = []
    with tempfile.TemporaryFile("w+") as errors:
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=errors, text=True) as p:
            for line in p.stdout:
                lines.append(line)
                if echo:
                    print(
                        f"  [{time.perf_counter() - started:7.1f} s] {line.rstrip()[:120]}",
                        file=sys.stderr,
                        flush=True,
                    )
        seconds = time.perf_counter() - started
        if p.returncode != 0:
            errors.seek(0)
            sys.exit(f"{' '.join(cmd[:4])} failed ({p.returncode}):\n{errors.read()[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return seconds, cpu, "".join(lines)


def run_braintl(args, work: str, weights: str, key: str, n: int, env: dict) -> dict:
    out = os.path.join(work, f"braintl-{n}")  # a new folder: no tensor or feature cache yet
    cmd = [sys.executable, "-m", "braintl.cli", *train_args(args, out, weights)]
    seconds, cpu, stdout = timed(cmd, env, echo=False)
    metrics = json.loads(stdout)
    if not metrics["data"]["tensors_url"].endswith(key):
        sys.exit("braintl train built other tensors than the naive split was taken from")
    last = metrics["history"][-1]
    return {
        "side": "braintl",
        "whole_s": seconds,
        "cpu_s": cpu,
        "train_s": metrics["timings"]["train_seconds"],
        "data_s": metrics["timings"]["data_seconds"],
        "val_auc": last["val_auc"],
        "val_acc": last["val_acc"],
    }


def run_naive(args, split: str, weights: str, same_settings: bool, env: dict) -> dict:
    cmd = [sys.executable, str(HERE / "naive_train.py"), "--data", args.data, "--split", split]
    cmd += ["--weights", weights, "--image-size", str(args.image_size)]
    cmd += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    cmd += ["--lr", str(args.lr), "--workers", str(args.workers)]
    if same_settings:
        cmd.append("--same-settings")
        env = env | BRAINTL_MALLOC
    seconds, cpu, stdout = timed(cmd, env, echo=True)
    result = json.loads(stdout.splitlines()[-1])
    return {
        "side": "naive, braintl's settings" if same_settings else "naive, plain",
        "whole_s": seconds,
        "cpu_s": cpu,
        "train_s": result["train_seconds"],
        "val_auc": result["val_auc"],
        "val_acc": result["val_acc"],
    }


def median_by_side(runs: list[dict]) -> dict[str, dict]:
    sides = {}
    for side in dict.fromkeys(r["side"] for r in runs):
        mine = sorted((r for r in runs if r["side"] == side), key=lambda r: r["whole_s"])
        sides[side] = mine[len(mine) // 2]
    return sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with yes/ and no/ images")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--batch-size", type=int, default=18)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--workers", type=int, default=2, help="naive DataLoader workers")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side (median kept)")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--naive-from", metavar="JSON", help="an earlier result's naive runs")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    args.data = os.path.abspath(args.data)
    if "braintl" not in args.sides:
        sys.exit("--sides: braintl is what every ratio is taken against; add it")
    earlier = _earlier(args) if args.naive_from else None
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="bench-training-")
    key, split, weights = set_up(args, work)
    env = {k: v for k, v in os.environ.items() if k not in BRAINTL_MALLOC}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    runs = []
    for n in range(args.repeats):
        if "braintl" in args.sides:
            runs.append(run_braintl(args, work, weights, key, n, env))
            print(_line(runs[-1]), flush=True)
        for same_settings in (False, True):
            if f"naive-{'settings' if same_settings else 'plain'}" in args.sides:
                runs.append(run_naive(args, split, weights, same_settings, env))
                print(_line(runs[-1]), flush=True)
                write_report(args, load_before, split, runs, earlier)  # kept if later ones fail
    ratios = write_report(args, load_before, split, runs, earlier)
    for side, ratio in ratios.items():
        cpu = f", CPU time ×{ratio['cpu']:.2f}" if "cpu" in ratio else ""
        pairs = ratio.get("whole_by_pair")
        each = f" (by pair: {', '.join(f'{p:.1f}' for p in pairs)})" if pairs else ""
        print(
            f"{side}: whole process ×{ratio['whole']:.2f}{each}, "
            f"training only ×{ratio['train']:.2f}{cpu}"
        )
    print(f"load average {load_before[0]:.1f} → {os.getloadavg()[0]:.1f}; JSON: {args.out}")


def write_report(args, load_before, split: str, runs: list[dict], earlier: dict | None) -> dict:
    """Write the JSON result of the runs so far; the ratios of each naive side to braintl."""
    if earlier is not None:
        runs = runs + [r for r in earlier["runs"] if r["side"] != "braintl"]
    sides = median_by_side(runs)
    ours = sides["braintl"]
    ratios = {
        side: {
            "whole": r["whole_s"] / ours["whole_s"],
            "train": r["train_s"] / ours["train_s"],
            **({"cpu": r["cpu_s"] / ours["cpu_s"]} if "cpu_s" in r else {}),
            **({} if earlier else _pairs(runs, side)),
        }
        for side, r in sides.items()
        if side != "braintl"
    }
    report = {
        "benchmark": "bench_training",
        **describe(load_before),
        "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "backbone": BACKBONE},
        "images": {k: len(v) for k, v in json.loads(Path(split).read_text()).items()},
        "weights": "random, BatchNorm statistics calibrated on the training images",
        "runs": runs,
        **({"naive_from": _provenance(args.naive_from, earlier)} if earlier else {}),
        "median": sides,
        "ratios_to_braintl": ratios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return ratios


def _pairs(runs: list[dict], side: str) -> dict:
    """Whole-process ratios run by run: the n-th run of ``side`` over braintl's n-th, taken
    minutes apart, and their median. On a shared machine whose speed drifts (here the same
    braintl run took 13 to 27 s within 20 minutes), a pair sees one speed more nearly than
    the medians of the two sides, which are taken at different times."""
    theirs = [r["whole_s"] for r in runs if r["side"] == side]
    ours = [r["whole_s"] for r in runs if r["side"] == "braintl"]
    by_pair = [t / o for t, o in zip(theirs, ours, strict=False)]
    return {"whole_by_pair": by_pair, "whole_median_of_pairs": statistics.median(by_pair)}


def _earlier(args) -> dict:
    """The earlier result whose naive runs this one reuses; its settings must be these."""
    earlier = json.loads(Path(args.naive_from).read_text())
    mine = {k: v for k, v in vars(args).items() if k not in ("out", "sides", "naive_from")}
    theirs = {k: earlier["settings"].get(k) for k in mine}
    if theirs != mine:
        changed = {k: (theirs[k], mine[k]) for k in mine if theirs[k] != mine[k]}
        sys.exit(f"--naive-from {args.naive_from}: other settings (earlier, now): {changed}")
    return earlier


def _provenance(path: str, earlier: dict) -> dict:
    """Where and when the reused naive runs were measured."""
    return {"file": os.path.basename(path), "date": earlier["date"]} | {
        "load_average": earlier["load_average"]
    }


def _line(run: dict) -> str:
    data = f"  (data {run['data_s']:.1f} s)" if "data_s" in run else ""
    return (
        f"{run['side']:>26}: whole {run['whole_s']:7.1f} s (CPU {run.get('cpu_s', 0):7.1f} s)  "
        f"training {run['train_s']:7.1f} s"
        f"{data}  final val AUC {run['val_auc']:.3f} acc {run['val_acc']:.3f}"
    )


if __name__ == "__main__":
    main()
