"""The orchestration's own cost at scale: N trials and N fold-like tasks that do no work.

Three layers, timed apart for N = 10, 100, ... (``--n``):
- **Tune**: a sweep of N trials of a trainable that only reports once (no compute), through
  Ray Tune as braintl runs it (reused actors, ``max_concurrent`` trials at once, braintl's trial
  table kept current by its callback);
- **Ray**: N Ray tasks that each write a small JSON record (what a fold returns), all submitted
  at once and gathered;
- **Prefect**: one flow submitting N tasks that each write their record (ThreadPoolTaskRunner,
  as the retrain flow's folds), against Prefect's temporary server unless PREFECT_API_URL is set.

Per-item overhead is wall time / N (the work itself is ~0). Ray's object-store peak is sampled
while the Ray layer runs. The load average goes into the result: on a shared machine it moves
the figures.

    python benchmarks/bench_scale.py --n 10 100 500
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from machine import describe

DEFAULT_OUT = Path(__file__).parent / "scale.json"


def _record(folder: str, i: int) -> dict:
    record = {"fold": i, "auc": 0.5}
    Path(folder, f"{i}.json").write_text(json.dumps(record))
    return record


def tune_layer(n: int, concurrency: int, storage: str) -> float:
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from braintl.storage import resolve
    from braintl.trialtable import TrialTable
    from braintl.tuning import _TableWriter

    def trainable(config: dict) -> None:
        tune.report({"val_auc": 0.5, "epoch": 1})

    plan = {f"t{i:04d}": {"model": "scratch_cnn/full"} for i in range(n)}
    table = _TableWriter(TrialTable.new(plan), resolve(storage).join(f"scale-{n}.json"), None)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 2 / concurrency}),
        param_space={"trial": tune.grid_search(list(plan))},
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(random_state=0, max_concurrent=concurrency),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"scale-{n}", storage_path=storage, verbose=0, callbacks=[table]
        ),
    )
    started = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - started
    assert len(grid) == n and not grid.errors
    return seconds


def ray_layer(n: int, folder: str) -> tuple[float, int]:
    import ray

    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            used = ray.available_resources().get("object_store_memory")
            total = ray.cluster_resources().get("object_store_memory")
            if used is not None and total is not None:
                peak[0] = max(peak[0], int(total - used))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    remote = ray.remote(num_cpus=0.5)(_record)
    started = time.perf_counter()
    records = ray.get([remote.remote(folder, i) for i in range(n)])
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    assert len(records) == n
    return seconds, peak[0]


def prefect_layer(n: int, folder: str) -> float:
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    record = task(name="record")(_record)

    @flow(name="scale", task_runner=ThreadPoolTaskRunner(max_workers=64))
    def many(folder: str, n: int) -> int:
        futures = [record.submit(folder, i) for i in range(n)]
        return len([f.result() for f in futures])

    many(folder, 1)  # the temporary server's start-up is not the tasks' cost
    started = time.perf_counter()
    assert many(folder, n) == n
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--concurrency", type=int, default=4, help="trials at once")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    # Prefect's temporary server in a home of its own (not ~/.prefect), given time to start on
    # a loaded machine.
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-scale-prefect-"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")

    import ray

    load_before = os.getloadavg()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for n in args.n:
            folder = os.path.join(work, f"records-{n}")
            os.makedirs(folder)
            tune_s = tune_layer(n, args.concurrency, os.path.join(work, "tune"))
            ray_s, peak = ray_layer(n, folder)
            prefect_s = prefect_layer(n, folder)
            row = {
                "n": n,
                "tune_s": round(tune_s, 2),
                "tune_per_trial_s": round(tune_s / n, 3),
                "ray_s": round(ray_s, 2),
                "ray_per_task_s": round(ray_s / n, 4),
                "object_store_peak_bytes": peak,
                "prefect_s": round(prefect_s, 2),
                "prefect_per_task_s": round(prefect_s / n, 3),
                "load_average": [round(x, 1) for x in os.getloadavg()],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {
        "benchmark": "bench_scale",
        **describe(load_before),
        "concurrency": args.concurrency,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
