"""Where a cold ``braintl train``'s time goes, stage by stage.

``bench_training`` compares whole processes; this says what braintl's side of that time is made
of: the set-up it pays whatever the epochs (imports, data, model build, feature pass) against the
epochs themselves. The same command as ``bench_training``'s braintl side (frozen MobileNetV2,
fold 0, offline augmentation on unless ``--no-augment``), each run a fresh process into a new
folder (no tensor or feature cache):

1. plain, timed from start to exit: wall time as users meet it, and the CPU time it used;
2. under cProfile with a CPU-time clock (``time.process_time``, all of the process's threads):
   each stage's CPU seconds. On a shared machine wall time mostly measures the other jobs; CPU
   time is what braintl itself spends. cProfile slows Python-heavy code, so read the stages as
   shares of the profiled total.

Stages (each including imports first made inside it): ``startup`` (``braintl.cli``'s imports,
argument parsing: everything before ``run_train``), ``data`` (``prepare``: listing, decoding,
preprocessing, duplicate search, augmentation, writing the tensor cache; and loading it back),
``model_build``, ``feature_pass`` (the frozen backbone over every image, written to the feature
cache), ``epochs`` (head training and validation), ``evaluation`` (validation and test scoring),
``writing`` (model, metrics, published package). ``imports`` counts every import, wherever made,
and ``import_packages`` the CPU time of importing each heavy package's ``__init__``.

    python benchmarks/training_fixed_cost.py --label before
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
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
    "main": ("braintl/cli.py", "main"),
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
PACKAGES = ("torch", "torchvision", "numpy", "scipy", "PIL", "pydantic", "fsspec", "safetensors")
PACKAGES += ("tqdm", "matplotlib", "jinja2", "pydicom", "nibabel", "sklearn", "braintl/report")
# braintl's command line under cProfile with a CPU-time clock, started before its imports.
PROFILED = """
import cProfile, sys, time
dump, sys.argv = sys.argv[1], ["braintl", *sys.argv[2:]]
profile = cProfile.Profile(time.process_time)
profile.enable()
try:
    from braintl.cli import main
    main()
finally:
    profile.disable()
    profile.dump_stats(dump)
"""


def train_args(args, out: str) -> list[str]:
    cmd = ["train", "--data", args.data, "--out", out]
    cmd += ["--backbone", "mobilenet_v2", "--strategy", "frozen", "--weights", "none"]
    cmd += ["--epochs", str(args.epochs), "--image-size", str(args.image_size)]
    cmd += ["--batch-size", "18", "--lr", "1e-3", "--fold", "0", "--json"]
    return cmd + ([] if args.augment else ["--no-augment"])


def run(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Wall time, CPU time and stdout of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:5])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(f"{' '.join(cmd[1:3])}: {seconds:.1f} s, CPU {cpu:.1f} s", file=sys.stderr, flush=True)
    return seconds, cpu, proc.stdout


def stages(profile: str) -> dict:
    """CPU seconds of the stages from a cProfile dump (see the module docstring)."""
    stats = pstats.Stats(profile).stats
    c = dict.fromkeys(FUNCTIONS, 0.0)
    packages = dict.fromkeys(PACKAGES, 0.0)
    for (filename, _, function), (_, _, _, ct, _) in stats.items():
        for key, (suffix, name) in FUNCTIONS.items():
            if function == name and filename.endswith(suffix):
                c[key] += ct
        for package in PACKAGES:
            if function == "<module>" and filename.endswith(f"/{package}/__init__.py"):
                packages[package] += ct
    total = pstats.Stats(profile).total_tt
    epochs = c["epoch"] - c["feature_pass"]  # the first epoch builds the feature cache
    data = c["prepare"] + c["load_tensors"]
    measured = data + c["model_build"] + c["feature_pass"] + epochs + c["evaluation"]
    parts = {
        "startup": total - c["run_train"],
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
        "total_cpu_s": round(total, 2),
        "stages_cpu_s": {k: round(v, 2) for k, v in parts.items()},
        "data_cpu_s": {k: round(v, 2) for k, v in data_parts.items()},
        "imports_cpu_s": round(c["imports"], 2),
        "import_packages_cpu_s": {k: round(v, 2) for k, v in packages.items() if v >= 0.01},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="this profile's name, e.g. before, after")
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with yes/ and no/ images")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--skip-plain", action="store_true", help="the CPU-clock profile only")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    args.data = os.path.abspath(args.data)
    paths = [str(HERE.parent), os.environ.get("PYTHONPATH")]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, paths))}
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="training-fixed-cost-")  # new folders: no caches yet
    plain = None
    if not args.skip_plain:
        cmd = [sys.executable, "-m", "braintl.cli", *train_args(args, f"{work}/plain")]
        whole, cpu, stdout = run(cmd, env)
        timings = json.loads(stdout)["timings"]
        plain = {
            "whole_s": round(whole, 2),
            "cpu_s": round(cpu, 2),
            "data_s": round(timings["data_seconds"], 2),
            "train_s": round(timings["train_seconds"], 2),
        }
    profile = f"{work}/train.prof"
    profiled, _, _ = run(
        [sys.executable, "-c", PROFILED, profile, *train_args(args, f"{work}/p")], env
    )
    commit = ["git", "-C", str(HERE), "describe", "--always", "--dirty"]
    result = {
        **describe(load_before),
        "commit": subprocess.run(commit, capture_output=True, text=True).stdout.strip(),
        "plain": plain,
        "cprofile": {"wall_s": round(profiled, 2), **stages(profile)},
    }
    path = Path(args.out)
    report = json.loads(path.read_text()) if path.exists() else {}
    report["benchmark"] = "training_fixed_cost"
    skip = ("out", "label", "skip_plain")
    report["settings"] = {k: v for k, v in vars(args).items() if k not in skip}
    report.setdefault("profiles", {})[args.label] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
