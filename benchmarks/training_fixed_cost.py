"""Where a cold ``braintl train``'s wall time goes, stage by stage.

``bench_training`` compares whole processes; this says what braintl's side of that time is made
of: the set-up it pays whatever the epochs (imports, data, model build, feature pass) against the
epochs themselves. The same command as ``bench_training``'s braintl side (frozen MobileNetV2,
fold 0, offline augmentation on unless ``--no-augment``), each run a fresh process into a new
folder (no tensor or feature cache):

1. plain, timed from start to exit: the whole-process time as users meet it;
2. under ``-X importtime``: import time in all (at start-up and lazily later) and by package;
3. under cProfile: each stage's cumulative time (cProfile slows Python-heavy code, so its stages
   add up to more than run 1's wall time; read them as shares).

Stages (cProfile, each including imports first made inside it): ``startup`` (interpreter,
``braintl.cli``'s imports, argument parsing: everything before ``run_train``), ``data``
(``prepare``: listing, decoding, preprocessing, duplicate search, augmentation, writing the
tensor cache; and loading it back), ``model_build``, ``feature_pass`` (the frozen backbone over
every image, written to the feature cache), ``epochs`` (head training and validation),
``evaluation`` (validation and test scoring), ``writing`` (model, metrics, published package).

    python benchmarks/training_fixed_cost.py --label before
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "training_fixed_cost.json"
DEFAULT_DATA = os.path.join(os.environ.get("BRAINTL_DATA_DIR", "../shared/data"), "brain_mri")
# (file suffix, function) whose cumulative time is a stage, or a part of one.
FUNCTIONS = {
    "run_train": ("braintl/commands/train.py", "run_train"),
    "prepare": ("braintl/data/prepare.py", "prepare"),
    "scan_data": ("braintl/data/prepare.py", "scan_data"),
    "build_tensors": ("braintl/data/prepare.py", "build_tensors"),
    "augment": ("braintl/data/augment.py", "augment_images"),
    "write_tensors": ("braintl/data/prepare.py", "_write"),
    "load_tensors": ("braintl/data/tensors.py", "load"),
    "model_build": ("braintl/models/factory.py", "create_model"),
    "feature_pass": ("braintl/training/features.py", "prefix_cache"),
    "epoch": ("braintl/training/loop.py", "epoch"),
    "evaluation": ("braintl/training/evaluate.py", "evaluate_split"),
    "imports": ("_bootstrap>", "_find_and_load"),
}
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def train_command(args, out: str) -> list[str]:
    cmd = ["-m", "braintl.cli", "train", "--data", args.data, "--out", out]
    cmd += ["--backbone", "mobilenet_v2", "--strategy", "frozen", "--weights", "none"]
    cmd += ["--epochs", str(args.epochs), "--image-size", str(args.image_size)]
    cmd += ["--batch-size", "18", "--lr", "1e-3", "--fold", "0", "--json"]
    return cmd + ([] if args.augment else ["--no-augment"])


def run(python_flags: list[str], args, work: str, name: str) -> tuple[float, float, str, str]:
    """Wall time, CPU time, stdout and stderr of one cold ``braintl train`` process."""
    out = os.path.join(work, name)  # a new folder: no tensor or feature cache yet
    cmd = [sys.executable, *python_flags, *train_command(args, out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=args.env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{name} run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(f"{name}: {seconds:.1f} s, CPU {cpu:.1f} s", file=sys.stderr, flush=True)
    return seconds, cpu, proc.stdout, proc.stderr


def imports(stderr: str, top: int = 12) -> dict:
    """Total import time and the heaviest top-level packages, from ``-X importtime``."""
    by_package: dict[str, float] = {}
    total = 0.0
    for match in IMPORT_LINE.finditer(stderr):
        _, cumulative, indent, name = match.groups()
        if not indent:  # a top-level import: its cumulative time covers what it pulled in
            seconds = int(cumulative) / 1e6
            total += seconds
            package = name.split(".")[0]
            by_package[package] = by_package.get(package, 0.0) + seconds
    heaviest = sorted(by_package.items(), key=lambda kv: -kv[1])[:top]
    return {"total_s": round(total, 2), "by_package_s": {k: round(v, 2) for k, v in heaviest}}


def stages(profile: str, wall: float) -> dict:
    """The stages' cumulative times from a cProfile dump (see the module docstring)."""
    stats = pstats.Stats(profile).stats
    cumulative = dict.fromkeys(FUNCTIONS, 0.0)
    for (filename, _, function), (_, _, _, ct, _) in stats.items():
        for key, (suffix, name) in FUNCTIONS.items():
            if function == name and filename.endswith(suffix):
                cumulative[key] += ct
    c = cumulative
    epochs = c["epoch"] - c["feature_pass"]  # the first epoch builds the feature cache
    data = c["prepare"] + c["load_tensors"]
    measured = data + c["model_build"] + c["feature_pass"] + epochs + c["evaluation"]
    parts = {
        "startup": wall - c["run_train"],
        "data": data,
        "model_build": c["model_build"],
        "feature_pass": c["feature_pass"],
        "epochs": epochs,
        "evaluation": c["evaluation"],
        "writing": c["run_train"] - measured,
    }
    data_parts = {
        "decode_and_scan": c["scan_data"],
        "augment": c["augment"],
        "stack_and_split": c["build_tensors"] - c["augment"],
        "write_tensors": c["write_tensors"],
        "load_tensors": c["load_tensors"],
    }
    return {
        "whole_s": round(wall, 2),
        "stages_s": {k: round(v, 2) for k, v in parts.items()},
        "data_s": {k: round(v, 2) for k, v in data_parts.items()},
        "imports_s": round(c["imports"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="this profile's name, e.g. before, after")
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with yes/ and no/ images")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    args.data = os.path.abspath(args.data)
    paths = [str(HERE.parent), os.environ.get("PYTHONPATH")]
    args.env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, paths))}
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="training-fixed-cost-")
    whole, cpu, stdout, _ = run([], args, work, "plain")
    timings = json.loads(stdout)["timings"]
    _, _, _, stderr = run(["-X", "importtime"], args, work, "importtime")
    profile = os.path.join(work, "train.prof")
    profiled, _, _, _ = run(["-m", "cProfile", "-o", profile], args, work, "cprofile")
    result = {
        **describe(load_before),
        "commit": subprocess.run(
            ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "plain": {
            "whole_s": round(whole, 2),
            "cpu_s": round(cpu, 2),
            "data_s": round(timings["data_seconds"], 2),
            "train_s": round(timings["train_seconds"], 2),
        },
        "importtime": imports(stderr),
        "cprofile": stages(profile, profiled),
    }
    path = Path(args.out)
    report = json.loads(path.read_text()) if path.exists() else {}
    report["benchmark"] = "training_fixed_cost"
    report["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "env", "label")}
    report.setdefault("profiles", {})[args.label] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
