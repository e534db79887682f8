"""Wall-clock timeline of a cold ``braintl train``, as the command line runs it.

``bench_training`` gives the whole process; ``training_fixed_cost`` the CPU seconds of each stage
under cProfile, which can't see a second process. This stamps the moments a user waits through,
from the process's own start (the kernel's start time, so the interpreter's start-up counts):
the imports done (the parser built), the data in hand, the model built, the feature pass, the
first and last epochs, evaluation and the published package, and the exit. Each ``--source`` is
a checkout (``LABEL=DIR``, e.g. an older commit in a git worktree); the sources alternate, each
run a fresh process into a new folder, in bench_training's set-up (frozen MobileNetV2, 96 px,
18 epochs, batch 18, fold 0, default augmentation), with its calibrated random weights.

    python benchmarks/train_timeline.py --source before=/tmp/old --source after=. --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_training import set_up
from machine import describe

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "train_timeline.json"
DEFAULT_DATA = os.path.join(os.environ.get("BRAINTL_DATA_DIR", "../shared/data"), "brain_mri")

# Runs inside the timed process: wraps library functions to stamp their start and end, then
# runs the command line's own main(). Instrumenting waits until after braintl.cli's imports
# (and, where it exists, the early data process's fork), so that it adds no import of its own
# before the command's.
PROBE = r"""
import json, os, sys, time
TICKS = os.sysconf("SC_CLK_TCK")
STARTED = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]) / TICKS
def now():
    return time.clock_gettime(time.CLOCK_BOOTTIME) - STARTED
marks = []
def mark(label):
    marks.append([label, round(now(), 3)])
out_json, argv = sys.argv[1], sys.argv[2:]
sys.argv = ["braintl", *argv]
from braintl import cli
mark("braintl.cli imported")

def wrap(owner, name, label):
    inner = getattr(owner, name)
    def stamped(*args, **kwargs):
        mark(label + " begin")
        try:
            return inner(*args, **kwargs)
        finally:
            mark(label + " end")
    setattr(owner, name, stamped)

def instrument():
    from braintl.commands import train
    from braintl.training import loop
    if hasattr(train, "train_data"):
        wrap(train.train_data.EarlyData, "result", "data")
    else:
        wrap(train, "prepare", "data")
    wrap(loop, "create_model", "model build")
    wrap(loop, "prefix_cache", "feature pass")
    wrap(train, "evaluate_split", "evaluation")
    wrap(train, "_publish", "package")
    inner_train = train.train
    def stamped_train(*args, callback=None, **kwargs):
        def epoch_done(record):
            mark(f"epoch {record['epoch']} end")
            return callback(record)
        return inner_train(*args, callback=epoch_done, **kwargs)
    train.train = stamped_train
    mark("imports done")

inner_build = cli.build_parser
def build_parser(*args):
    parser = inner_build(*args)
    instrument()
    return parser
cli.build_parser = build_parser
sys.stdout = open(os.devnull, "w")
try:
    code = cli.main()
    assert code == 0, code
finally:
    mark("main returned")
    with open(out_json, "w") as f:
        json.dump(marks, f)
"""


def run_once(source: Path, args, weights: str, work: str, n: int) -> dict:
    out = os.path.join(work, f"run-{n}")
    marks_file = os.path.join(work, f"marks-{n}.json")
    argv = [
        "train", "--data", args.data, "--out", out, "--backbone", "mobilenet_v2",
        "--strategy", "frozen", "--weights", weights, "--epochs", "18", "--batch-size", "18",
        "--lr", "0.001", "--image-size", "96", "--fold", "0", "--json",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(source)}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", PROBE, marks_file, *argv],
        cwd=source,
        env=env,
        check=True,
        stderr=subprocess.DEVNULL,
    )
    whole = time.perf_counter() - started
    marks = dict(json.loads(Path(marks_file).read_text()))
    return {"marks": marks, "exit_s": round(whole, 3), "stages": stages(marks, whole)}


def stages(m: dict, whole: float) -> dict:
    """Seconds of each stage on the critical path, from the marks."""
    data_end = m["data end"]
    return {
        "imports": m["imports done"],
        "data (after the imports)": round(data_end - m["imports done"], 3),
        "model build": round(m["model build end"] - m["model build begin"], 3),
        "feature pass": round(m["feature pass end"] - m["feature pass begin"], 3),
        "epochs": round(m["epoch 18 end"] - m["feature pass end"], 3),
        "evaluation and package": round(m["package end"] - m["evaluation begin"], 3),
        "exit": round(whole - m["main returned"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", action="append", required=True, metavar="LABEL=DIR")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    args.data = os.path.abspath(args.data)
    sources = {}
    for item in args.source:
        label, _, folder = item.partition("=")
        sources[label] = Path(folder).resolve()
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="train-timeline-")
    args.image_size, args.augment, args.epochs, args.batch_size, args.lr = 96, True, 18, 18, 1e-3
    _, _, weights = set_up(args, work)  # bench_training's calibrated random weights
    runs = []
    for _ in range(args.repeats):
        for label, source in sources.items():
            run = run_once(source, args, weights, work, len(runs))
            runs.append({"source": label, **run})
            print(label, run["exit_s"], run["stages"], flush=True)
    medians = {}
    for label in sources:
        mine = sorted((r for r in runs if r["source"] == label), key=lambda r: r["exit_s"])
        medians[label] = mine[len(mine) // 2]
    result = {
        "benchmark": "train_timeline",
        **describe(load_before),
        "sources": {label: str(source) for label, source in sources.items()},
        "median_run": medians,
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
