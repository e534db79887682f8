"""The scan at this checkout against an earlier commit's: whole process first, then the hashes.

Why: a change to the scan (decoding, hashes, the duplicate search) is judged as a user meets
it, a fresh process timed whole, beside the code it replaces in the same run on the same
machine: ``braintl data inspect --json``, cold, the sides alternating. The earlier commit is
exported with ``git archive`` to a temporary folder and put first on PYTHONPATH; both sides use
this environment's packages and settings. Each run's report (groups, pairs, fingerprint) must
equal the other side's, so a faster scan that finds other duplicates fails the benchmark
instead of passing as a gain. Then the per-image hashes alone (``perceptual_hash``,
``signature``), both versions in one process (the earlier one renamed), alternating image by
image, in CPU seconds: this machine's speed drifts within minutes, which separate runs mix in.

    python benchmarks/bench_scan.py --data ../shared/data/brain_mri --baseline c2eecf5
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from statistics import median

from machine import describe

from braintl.data import duplicates, signature
from braintl.data.decode import decode
from braintl.data.listing import list_images
from braintl.storage import resolve

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Fields of the report that are timings or locations, not findings.
NOT_FINDINGS = {"seconds", "root"}
BASELINE_PACKAGE = "braintl_baseline"
MODULES = ("duplicates", "signature")


def export(commit: str, into: str) -> str:
    """The ``braintl`` package as of ``commit``, extracted under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "braintl"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def export_renamed(commit: str, into: str) -> str:
    """The package as of ``commit``, renamed (its own imports too) to load beside this one."""
    package = Path(export(commit, into), "braintl").rename(Path(into, BASELINE_PACKAGE))
    for source in package.rglob("*.py"):
        text = re.sub(r"\bbraintl\.", f"{BASELINE_PACKAGE}.", source.read_text())
        source.write_text(text.replace("from braintl import", f"from {BASELINE_PACKAGE} import"))
    return into


def hashes(data: str, baseline: str) -> dict:
    """CPU seconds of each side's hashes over every image of ``data``, image by image."""
    sys.path.insert(0, baseline)
    old = [importlib.import_module(f"{BASELINE_PACKAGE}.data.{m}") for m in MODULES]
    sides = [("baseline", *old), ("now", duplicates, signature)]
    cpu: dict[str, float] = defaultdict(float)
    images = list_images(data).images
    for n, ref in enumerate(images):
        rgb = decode(resolve(ref.url).read_bytes()).rgb
        outputs = []
        for side, dup, sig in sides if n % 2 == 0 else reversed(sides):
            start = time.process_time()
            phash = dup.perceptual_hash(rgb)
            cpu[f"{side} perceptual_hash"] += time.process_time() - start
            start = time.process_time()
            vector = sig.signature(rgb)
            cpu[f"{side} signature"] += time.process_time() - start
            outputs.append((phash, vector.tobytes()))
        if outputs[0] != outputs[1]:
            sys.exit(f"{ref.relpath}: the two sides hash it differently")
    return {"images": len(images), "cpu_s": {k: round(v, 3) for k, v in sorted(cpu.items())}}


def inspect(data: str, path: str) -> tuple[dict, dict]:
    """One cold ``braintl data inspect --json`` with ``path`` first on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": path}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "braintl.cli", "data", "inspect", data, "--json"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),  # not the checkout: only PYTHONPATH decides which braintl
    )
    if out.returncode != 0:
        sys.exit(f"braintl data inspect failed ({path}):\n{out.stderr}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = json.loads(out.stdout)
    timing = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "scan_s": report["seconds"]}
    return timing, {k: v for k, v in report.items() if k not in NOT_FINDINGS}


def against_baseline_args(doc: str, data_help: str, repeats: int, out: str) -> argparse.Namespace:
    """The command line of a benchmark comparing this checkout with an earlier commit."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--baseline", required=True, help="the earlier commit")
    parser.add_argument("--repeats", type=int, default=repeats, help="runs per side, alternating")
    parser.add_argument("--out", default=str(HERE / "results" / out))
    args = parser.parse_args()
    args.data = os.path.abspath(args.data)
    return args


def main() -> None:
    data_help = "a folder braintl data inspect reads"
    args = against_baseline_args(__doc__, data_help, 5, "bench_scan.json")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as old:
        sides = {"baseline": export(args.baseline, old), "now": str(ROOT)}
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        findings = {}
        for n in range(args.repeats):
            order = list(sides) if n % 2 == 0 else list(reversed(sides))
            for side in order:
                timing, findings[side] = inspect(args.data, sides[side])
                runs[side].append(timing)
                print(side, timing, flush=True)
            if findings["baseline"] != findings["now"]:
                sys.exit("the two sides' reports differ: the change alters what the scan finds")
    with tempfile.TemporaryDirectory() as old:
        hashed = hashes(args.data, export_renamed(args.baseline, old))
    cpu = hashed["cpu_s"]
    for part in ("perceptual_hash", "signature"):
        hashed[f"ratio {part}"] = round(cpu[f"baseline {part}"] / cpu[f"now {part}"], 3)
    print("hashes", hashed, flush=True)
    medians = {s: {k: median(r[k] for r in runs[s]) for k in runs[s][0]} for s in runs}
    result = {
        **describe(load),
        "data": args.data,
        "baseline": args.baseline,
        "now": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        + (" + working tree" if _dirty() else ""),
        "files": findings["now"]["files"],
        "runs": runs,
        "medians": medians,
        "ratio_baseline_over_now": {
            k: round(medians["baseline"][k] / medians["now"][k], 3) for k in medians["now"]
        },
        "hashes": hashed,
        "wall_by_pair": [
            round(b["wall_s"] / c["wall_s"], 3)
            for b, c in zip(runs["baseline"], runs["now"], strict=True)
        ],
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratio_baseline_over_now"]), "by pair", result["wall_by_pair"])


def _dirty() -> bool:
    status = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "braintl"], capture_output=True, text=True
    )
    return bool(status.stdout.strip())


if __name__ == "__main__":
    main()
