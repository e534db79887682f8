"""Where `braintl run`'s wall time goes: stages, compute, and orchestration (Prefect and Ray).

Runs ``braintl run --json`` (quick profile, the real scans by default) in a fresh process with
its own Prefect home, so the Prefect database holds this run only, then reads back:

- the stages' wall times the flow wrote to ``run.json``;
- every Prefect task run's start and end (through ``prefect.get_client()``);
- the compute the work measured itself: each sweep trial's span (from its attempt's start to its
  last report, as braintl's trial table records them) and each fold's ``seconds`` (ending
  when it wrote ``metrics.json``), plus the prepare task (decoding, augmentation, tensors).

Orchestration is, as defined from the start, the wall time during which none of that compute
was running: process start, Prefect's server and task bookkeeping, Ray start-up and scheduling,
result writing, and the report and publish tasks (:data:`REPORT_TASKS`), whose share is shown
on a line of its own. Also given: how full the cores were (compute-seconds over cores × wall).
Target: orchestration ≤ 20 %.

    python benchmarks/bench_run.py                       # ~11 min on 2 cores
    python benchmarks/bench_run.py --data /tmp/phantoms --backbones scratch_cnn --epochs 1
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

from machine import describe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "/work/shared/data/brain_mri"
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "bench_run.json"
TARGET_SHARE = 0.20
COMPUTE_TASKS = ("prepare",)  # the one task whose whole duration is compute
REPORT_TASKS = ("aggregate", "report", "publish-model")  # orchestration, shown on their own


def run_braintl(args: argparse.Namespace, out: Path, env: dict) -> tuple[dict, float]:
    """``braintl run --json``: its final record and its wall time."""
    cmd = [sys.executable, "-m", "braintl.cli", "run", "--json", "--force"]
    cmd += ["--data", args.data, "--out", str(out), "--profile", args.profile]
    for flag in ("backbones", "strategies", "epochs", "folds", "image_size", "ray_address"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"braintl run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = proc.stdout.splitlines()  # progress lines, then one indented JSON object
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:])), wall


def task_runs() -> list[dict]:
    """Every task run in this Prefect home's database (this benchmark's run only)."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs()
    return [
        {
            "name": r.name,
            "state": r.state.name if r.state else None,
            "start": r.start_time.timestamp() if r.start_time else None,
            "end": r.end_time.timestamp() if r.end_time else None,
        }
        for r in runs
    ]


def trial_intervals(run_dir: Path) -> list[tuple[float, float]]:
    """(start, end) of every sweep trial's last attempt: when it started and when it last
    reported, from braintl's trial tables (Tune's own records are kept in a private folder
    deleted after the sweep)."""
    from braintl import trialtable
    from braintl.storage import resolve

    spans = []
    for path in sorted(run_dir.glob("sweep/*-trials.json")):
        table = trialtable.read(resolve(str(path)))
        for trial in table.trials.values() if table else ():
            started, reported = trial.placement.get("started"), trial.placement.get("reported")
            if started is not None and reported is not None:
                spans.append((float(started), float(reported)))
    return spans


def fold_intervals(run_dir: Path) -> list[tuple[float, float]]:
    """(start, end) of every fold: its own ``seconds``, ending when it wrote metrics.json."""
    results = json.loads((run_dir / "results.json").read_text())
    spans = []
    for model in results["models"]:
        for run in model["runs"]:
            end = os.path.getmtime(run["metrics_url"])
            spans.append((end - run["seconds"], end))
    return spans


def union_seconds(spans: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``spans`` clipped to [lo, hi]."""
    total, reach = 0.0, lo
    for start, end in sorted(spans):
        start, end = max(start, reach), min(end, hi)
        if end > start:
            total += end - start
            reach = end
    return total


def stage_windows(run: dict, ended: float, tasks: list[dict]) -> list[tuple[str, float, float]]:
    """(stage, start, end) on the clock, from run.json's stage durations laid end to end,
    starting when the first task run started (process and server start come before)."""
    first = min(t["start"] for t in tasks if t["start"])
    windows, clock = [], first
    for stage, seconds in sorted(run["stages"].items(), key=lambda item: _stage_rank(item[0])):
        windows.append((stage, clock, clock + seconds))
        clock += seconds
    windows.append(("publish", clock, ended))
    return windows


def _stage_rank(stage: str) -> int:
    """The flow's order (run.json stores its stages sorted by name)."""
    order = ("prepare", "sweep", "cross-validation", "results")
    return next((i for i, name in enumerate(order) if stage.startswith(name)), len(order))


def analyse(record: dict, wall: float, started: float, tasks: list[dict], cores: int) -> dict:
    run_dir = Path(record["run_url"])
    run = json.loads((run_dir / "run.json").read_text())
    work = _spans(tasks, COMPUTE_TASKS)
    reporting = _spans(tasks, REPORT_TASKS)
    trials, folds = trial_intervals(run_dir), fold_intervals(run_dir)
    compute = work + trials + folds
    ended = started + wall
    windows = stage_windows(run, ended, tasks)
    rows = [{"stage": "start-up", "start": started, "end": windows[0][1]}]
    rows += [{"stage": s, "start": a, "end": b} for s, a, b in windows]
    for row in rows:
        lo, hi = row.pop("start"), row.pop("end")
        inside = [(max(a, lo), min(b, hi)) for a, b in compute if b > lo and a < hi]
        row["wall_s"] = hi - lo
        row["compute_s"] = sum(b - a for a, b in inside)
        row["busy_s"] = union_seconds(inside, lo, hi)
        row["orchestration_s"] = row["wall_s"] - row["busy_s"]
        row["report_publish_s"] = union_seconds(reporting, lo, hi)
    busy = union_seconds(compute, started, ended)
    report_publish = union_seconds(reporting, started, ended)
    compute_s = sum(b - a for a, b in compute)
    return {
        "wall_s": wall,
        "cores": cores,
        "stages": rows,
        "compute_s": compute_s,
        "busy_s": busy,
        "orchestration_s": wall - busy,
        "orchestration_share": (wall - busy) / wall,
        "report_publish_s": report_publish,
        "report_publish_share": report_publish / wall,
        "other_orchestration_share": (wall - busy - report_publish) / wall,
        "core_use": compute_s / (cores * wall),
        "target_share": TARGET_SHARE,
        "counts": {"trials": len(trials), "folds": len(folds), "task_runs": len(tasks)},
        "task_runs": tasks,
        "started": started,
        "record": record,
    }


def _spans(tasks: list[dict], names: tuple[str, ...]) -> list[tuple[float, float]]:
    return [(t["start"], t["end"]) for t in tasks if t["name"].startswith(names) and t["end"]]


def table(result: dict) -> str:
    lines = [
        "| stage              |  wall s | compute s |  busy s | orchestration s | of which "
        "report/publish s | share |",
        "|--------------------|---------|-----------|---------|-----------------|----------"
        "----------------|-------|",
    ]
    for r in result["stages"] + [{"stage": "total", **result}]:
        share = r["orchestration_s"] / r["wall_s"] if r["wall_s"] else 0.0
        lines.append(
            f"| {r['stage']:<18} | {r['wall_s']:>7.1f} | {r['compute_s']:>9.1f} | "
            f"{r['busy_s']:>7.1f} | {r['orchestration_s']:>15.1f} | "
            f"{r['report_publish_s']:>25.1f} | {share:>5.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="labelled scans (default: real)")
    parser.add_argument("--out", type=Path, help="run output folder (default: a temp folder)")
    parser.add_argument("--profile", default="quick", choices=("quick", "paper"))
    parser.add_argument("--backbones")
    parser.add_argument("--strategies")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--folds", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--ray-address", help="a running Ray head (its start-up is then not timed)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON written here")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        out = args.out or Path(tmp) / "out"
        # A Prefect home of its own: the (ephemeral) server's database then holds this run only.
        # Its database is created before the clock starts (by a process that then exits, so
        # one server at a time uses it), as a user's would already exist.
        os.environ["PREFECT_HOME"] = str(Path(tmp) / "prefect")
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        warm = "import bench_run; bench_run.task_runs()"
        subprocess.run([sys.executable, "-c", warm], cwd=Path(__file__).parent, env=env, check=True)
        started = time.time()
        record, wall = run_braintl(args, out, env)
        tasks = task_runs()
        result = analyse(record, wall, started, tasks, os.cpu_count() or 1)
    result |= {
        "benchmark": "bench_run",
        **describe(load_before),
        "data": args.data,
        "profile": args.profile,
        "options": {k: v for k, v in vars(args).items() if k not in ("out", "results")},
    }
    del result["task_runs"]  # hundreds of rows: the stages and totals are the result
    print(table(result))
    print(
        f"\nwall {wall:.0f} s: orchestration {result['orchestration_share']:.0%} "
        f"(target ≤ {TARGET_SHARE:.0%}; report/publish {result['report_publish_share']:.0%} "
        f"of it), cores {result['core_use']:.0%} busy; "
        f"{result['counts']['trials']} trials, {result['counts']['folds']} folds"
    )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"written to {args.results}")


if __name__ == "__main__":
    main()
