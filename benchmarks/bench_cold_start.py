"""Cold command-line processes against an earlier commit: what each one pays before its answer
or its first image (:mod:`braintl.models.without_dynamo` leaves torch._dynamo unloaded).

Each command runs in a fresh ``python`` from a temporary folder, with one side's ``braintl``
first on PYTHONPATH (the earlier commit exported with ``git archive``), the sides alternating,
whole process timed, wall and CPU:

- ``version``, ``help``: ``braintl --version`` and ``braintl --help``, which import no
  command's module (:mod:`braintl.cli`).
- ``predict``: ``braintl predict`` of one folder with a MobileNetV2 package (96 px), the figure
  a user meets; both sides' probabilities are required equal.
- ``build <backbone>``: ``create_model`` at 224 px and exit, what a process scoring with that
  backbone pays first.
- ``train``: ``braintl train`` for 2 epochs (frozen MobileNetV2, 96 px), a process that also
  builds an optimizer, which imports torch._dynamo in any case: expected even.

    python benchmarks/bench_cold_start.py --data ../shared/data/brain_mri --baseline 287e061
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from bench_scan import ROOT, _dirty, against_baseline_args, export
from machine import describe

BUILDS = ("mobilenet_v2", "vgg16", "resnet50")


def train_args(data: str, out: str, epochs: int) -> list[str]:
    return ["-m", "braintl.cli", "train", "--data", data, "--out", out, "--backbone"] + [
        "mobilenet_v2", "--strategy", "frozen", "--weights", "none", "--epochs", str(epochs),
        "--batch-size", "18", "--image-size", "96", "--fold", "0", "--json",
    ]  # fmt: skip


def timed(args: list[str], path: str) -> tuple[dict, str]:
    """One cold ``python ARGS`` with ``path`` first on PYTHONPATH: its timings and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, *args],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),  # not the checkout: only PYTHONPATH decides which braintl
    )
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(args[:4])} failed ({path}):\n{out.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}, out.stdout


def commands(data: str, images: str, package: str, work: str) -> dict[str, list[str]]:
    predict = ["-m", "braintl.cli", "predict", "--model", package, images, "--json"]
    build = "from braintl.models import create_model; create_model({!r}, image_size=224)"
    return {
        "version": ["-m", "braintl.cli", "--version"],
        "help": ["-m", "braintl.cli", "--help"],
        "predict": predict,
        **{f"build {name}": ["-c", build.format(name)] for name in BUILDS},
        "train": train_args(data, os.path.join(work, "train"), 2),
    }


def scores(stdout: str) -> list:
    """The probabilities of ``braintl predict --json``, the part both sides must agree on."""
    return [row["probability"] for row in json.loads(stdout)["predictions"]]


def main() -> None:
    args = against_baseline_args(
        __doc__, "an image folder with class subfolders", 4, "bench_cold_start.json"
    )
    images = str(sorted(p for p in Path(args.data).iterdir() if p.is_dir())[0])
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as old, tempfile.TemporaryDirectory() as work:
        timed(train_args(args.data, os.path.join(work, "package"), 1), str(ROOT))  # set-up
        package = os.path.join(work, "package", "model")
        sides = {"baseline": export(args.baseline, old), "now": str(ROOT)}
        todo = commands(args.data, images, package, work)
        runs = {name: {side: [] for side in sides} for name in todo}
        for n in range(args.repeats):
            for name, command in todo.items():
                predicted = {}
                for side in sides if n % 2 == 0 else reversed(sides):
                    timing, stdout = timed(command, sides[side])
                    shutil.rmtree(os.path.join(work, "train"), ignore_errors=True)  # stay cold
                    runs[name][side].append(timing)
                    if name == "predict":
                        predicted[side] = scores(stdout)
                    print(n, name, side, timing, flush=True)
                if predicted and predicted["baseline"] != predicted["now"]:
                    sys.exit("the two sides' predictions differ: the change alters the model")
    result = {
        **describe(load),
        "data": args.data,
        "predict_images": images,
        "baseline": args.baseline,
        "now": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        + (" + working tree" if _dirty() else ""),
        "runs": runs,
    }
    for name, sides_runs in runs.items():
        med = {s: {k: median(r[k] for r in rs) for k in rs[0]} for s, rs in sides_runs.items()}
        result[name] = {
            "medians": med,
            "ratio_baseline_over_now": {
                k: round(med["baseline"][k] / med["now"][k], 3) for k in med["now"]
            },
            "wall_by_pair": [
                round(b["wall_s"] / c["wall_s"], 3)
                for b, c in zip(sides_runs["baseline"], sides_runs["now"], strict=True)
            ],
        }
        print(name, json.dumps(result[name]["ratio_baseline_over_now"]), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
