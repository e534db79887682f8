"""The orchestration's own cost at scale: N trials and N fold-like tasks that do no work.

Three layers, timed apart for N = 10, 100, ... (``--n``), and the trial table's bookkeeping:
- **Tune**: a sweep of N trials of a trainable that only reports once (no compute), through
  braintl's own Tune run (ASHA, reused actors, ``--concurrency`` trials at once, the trial table
  kept current by its callback), in two variants: with Tune's own per-trial logs and experiment
  snapshots (Tune's default) and without them (braintl's setting). They alternate ABBA in this
  one process (``--repeats`` runs of each), so neither gains from going first or second; each
  run and the medians are recorded, wall time and the driver's CPU time (the wall time is
  mostly waiting for the trials' workers, which a loaded machine starves);
- **Ray**: N Ray tasks that each write a small JSON record (what a fold returns), all submitted
  at once and gathered;
- **Prefect**: one flow submitting N tasks that each write their record (ThreadPoolTaskRunner,
  as the retrain flow's folds), against Prefect's temporary server (SQLite in its own home);
- **trial table** (N = ``--table-n``): what the table's callback writes when a trial ends (its
  journal entry, through braintl's storage layer, on local disk), bytes and seconds per end,
  beside a write of the whole table at N trials (what each end cost before the journal, and
  what the progress save costs at most every few seconds).

Per-item overhead is wall time / N (the work itself is ~0). Ray's object-store peak (bytes in
every node's store, from the raylet's store stats) is sampled while the Tune and Ray layers
run. For Prefect: the HTTP requests this process sent to its API (counted at httpx's ``send``,
which every Prefect client goes through), the events the server stored (task runs report their
states as events, over one websocket, not as requests) and the growth of its SQLite database
(rows and bytes). The load average goes into the result: on a shared machine it moves the
figures.

    python benchmarks/bench_scale.py --n 10 100 500
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import statistics
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from machine import describe

DEFAULT_OUT = Path(__file__).parent / "scale.json"
GOAL_TUNE_PER_TRIAL_S = 0.3  # Tune + Ray at 500 trials on this 2-core machine (issue 16)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TUNE_DEFAULTS = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0", "TUNE_GLOBAL_CHECKPOINT_S": "auto"}


def _record(folder: str, i: int) -> dict:
    record = {"fold": i, "auc": 0.5}
    Path(folder, f"{i}.json").write_text(json.dumps(record))
    return record


def tune_layer(
    n: int, concurrency: int, storage: str, tune_records: bool, run: int
) -> tuple[float, float]:
    """N report-only trials through braintl's own Tune run (``tuning._fit``: ASHA, reused
    actors, ``concurrency`` at once, the trial table kept current); with ``tune_records`` Tune
    keeps its own records as it does by default (braintl turns them off). Returns the wall time
    and the CPU time of this process, Tune's driver: the wall time is mostly waiting for the
    trials' workers, which other load on the machine starves; the driver's CPU time is what
    the records themselves cost it."""
    from ray import tune

    from braintl import tuning
    from braintl.storage import resolve
    from braintl.trialtable import TrialTable

    def trainable(config: dict) -> None:
        tune.report({"val_auc": 0.5, "epoch": 1})

    for variable in tuning.TUNE_RECORDS_OFF:
        if tune_records:
            os.environ[variable] = TUNE_DEFAULTS[variable]
        else:
            os.environ.pop(variable, None)  # braintl's own values, set by _fit
    table = TrialTable.new({f"t{i:04d}": {"model": "scratch_cnn/full"} for i in range(n)})
    sweep = tuning.SweepConfig(max_concurrent_trials=concurrency, cpus_per_trial=2 / concurrency)
    where = resolve(storage).join(f"scale-{n}-{run}-trials.json")
    started, cpu = time.perf_counter(), time.process_time()
    tuning._fit(trainable, table, where, sweep, 1, f"scale-{n}-{run}", None, None)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert [t.status for t in table.trials.values()] == ["finished"] * n
    return seconds, cpu


def tune_abba(n: int, concurrency: int, storage: str, repeats: int) -> dict:
    """Both variants ``repeats`` times each, alternating A B B A A B ...: each run and the
    medians of wall and driver CPU time (braintl's setting: ``tune_per_trial_s``)."""
    runs = []
    for i in range(repeats):
        for records in (True, False) if i % 2 == 0 else (False, True):
            seconds, cpu = tune_layer(n, concurrency, storage, records, len(runs))
            runs.append({"tune_records": records, "s": round(seconds, 2), "cpu_s": round(cpu, 2)})

    def median(key: str, records: bool) -> float:
        return statistics.median(r[key] for r in runs if r["tune_records"] == records)

    with_records, without = median("s", True), median("s", False)
    cpu_with_records, cpu_without = median("cpu_s", True), median("cpu_s", False)
    return {
        "tune_with_its_records_s": round(with_records, 2),
        "tune_with_its_records_per_trial_s": round(with_records / n, 3),
        "tune_s": round(without, 2),
        "tune_per_trial_s": round(without / n, 3),
        "tune_records_cost_ratio": round(with_records / without, 2),
        "tune_with_its_records_driver_cpu_per_trial_s": round(cpu_with_records / n, 4),
        "tune_driver_cpu_per_trial_s": round(cpu_without / n, 4),
        "tune_records_driver_cpu_ratio": round(cpu_with_records / cpu_without, 2),
        "tune_runs": runs,
    }


def table_layer(n: int, storage: str) -> dict:
    """The trial table's callback driven through N trials (start, one report, end) on real
    storage: seconds and bytes of the end's write (the trial's journal entry), and of a write of
    the whole N-trial table (the median of 5)."""
    from types import SimpleNamespace

    from braintl import trialtable
    from braintl.storage import resolve
    from braintl.trialtable import TrialTable
    from braintl.tuning import _TableWriter

    where = resolve(storage).join(f"table-{n}-trials.json")
    table = TrialTable.new({f"t{i:04d}": {"model": "scratch_cnn/full"} for i in range(n)})
    writer = _TableWriter(table, where, notify=None)
    end_s = 0.0
    for trial_id in table.plan:
        trial = SimpleNamespace(config={"trial": trial_id})
        writer.on_trial_start(0, [], trial)
        writer.on_trial_result(0, [], trial, {"epoch": 1, "val_auc": 0.5, "train_loss": 0.7})
        started = time.perf_counter()
        writer.on_trial_complete(0, [], trial)
        end_s += time.perf_counter() - started
    entries = trialtable.journal(where)
    end_bytes = [entries.fs.size(p) for p in entries.fs.find(entries.path)]
    assert len(end_bytes) == n
    whole = []
    for _ in range(5):
        started = time.perf_counter()
        table.write(where)
        whole.append(time.perf_counter() - started)
    return {
        "table_end_write_s": round(end_s / n, 5),
        "table_end_bytes": round(statistics.mean(end_bytes)),
        "table_whole_write_s": round(statistics.median(whole), 5),
        "table_whole_bytes": where.fs.size(where.path),
    }


def object_store_used() -> int:
    """Bytes in the object stores of all nodes now (what `ray memory --stats-only` shows)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
    return int(reply.store_stats.object_store_bytes_used)


@contextmanager
def object_store_peak(every_s: float = 0.5):
    """Yields a one-item list that holds, on exit, the most bytes the object stores held."""
    peak, done = [object_store_used()], threading.Event()

    def sample() -> None:
        while not done.wait(every_s):
            peak[0] = max(peak[0], object_store_used())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], object_store_used())


def ray_layer(n: int, folder: str) -> float:
    import ray

    remote = ray.remote(num_cpus=0.5)(_record)
    started = time.perf_counter()
    records = ray.get([remote.remote(folder, i) for i in range(n)])
    seconds = time.perf_counter() - started
    assert len(records) == n
    return seconds


class RequestCount:
    """HTTP requests sent through httpx in this process (Prefect's clients), by method and
    path, while installed."""

    def __init__(self):
        self.calls: Counter[str] = Counter()

    @contextmanager
    def installed(self):
        import httpx

        originals = {cls: cls.send for cls in (httpx.Client, httpx.AsyncClient)}

        def counting(original):
            def send(client, request, *args, **kwargs):
                self.calls[f"{request.method} {UUID.sub('{id}', request.url.path)}"] += 1
                return original(client, request, *args, **kwargs)

            return send

        for cls, original in originals.items():
            cls.send = counting(original)
        try:
            yield self
        finally:
            for cls, original in originals.items():
                cls.send = original


def database(path: Path) -> dict:
    """Rows per table and bytes (the file and its write-ahead log) of Prefect's SQLite DB."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {t: db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    files = [path, path.with_name(path.name + "-wal")]
    return {"rows": rows, "bytes": sum(f.stat().st_size for f in files if f.exists())}


def settled(path: Path, task_runs: int, timeout_s: float = 120) -> dict:
    """The database once the server has recorded ``task_runs`` task runs (it writes them from
    events, after the flow returns) and stopped growing."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        now = database(path)
        if now["rows"].get("task_run", 0) >= task_runs and now == last:
            return now
        last = now
        time.sleep(1)
    raise TimeoutError(f"Prefect's server recorded {last['rows'].get('task_run')} task runs")


def prefect_layer(n: int, folder: str, db_path: Path) -> dict:
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    record = task(name="record")(_record)

    @flow(name="scale", task_runner=ThreadPoolTaskRunner(max_workers=64))
    def many(folder: str, n: int) -> int:
        futures = [record.submit(folder, i) for i in range(n)]
        return len([f.result() for f in futures])

    many(folder, 1)  # the temporary server's start-up is not the tasks' cost
    before = settled(db_path, 0)
    with RequestCount().installed() as requests:
        started = time.perf_counter()
        assert many(folder, n) == n
        seconds = time.perf_counter() - started
    after = settled(db_path, before["rows"].get("task_run", 0) + n)
    added = {t: after["rows"][t] - before["rows"].get(t, 0) for t in after["rows"]}
    return {
        "prefect_s": round(seconds, 2),
        "prefect_per_task_s": round(seconds / n, 4),
        "prefect_api_requests": sum(requests.calls.values()),
        "prefect_api_requests_by_path": dict(requests.calls.most_common(8)),
        "prefect_events_stored": added.get("events", 0),
        "prefect_db_rows_added": {t: k for t, k in sorted(added.items()) if k},
        "prefect_db_bytes_added": after["bytes"] - before["bytes"],
        "prefect_db_bytes_per_task": round((after["bytes"] - before["bytes"]) / n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--concurrency", type=int, default=4, help="trials at once")
    parser.add_argument("--repeats", type=int, default=2, help="Tune runs of each variant")
    parser.add_argument("--table-n", type=int, nargs="+", default=[10, 100, 500, 1000])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    # Prefect's temporary server in a home of its own (not ~/.prefect), given time to start on
    # a loaded machine.
    os.environ.pop("PREFECT_API_URL", None)
    home = Path(os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-scale-")))
    db_path = home / "bench-scale.db"
    os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{db_path}"
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")

    import ray

    load_before = os.getloadavg()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for n in args.n:
            folder = os.path.join(work, f"records-{n}")
            os.makedirs(folder)
            tune_dir = os.path.join(work, "tune")
            with object_store_peak() as tune_peak:
                tune = tune_abba(n, args.concurrency, tune_dir, args.repeats)
            with object_store_peak() as ray_peak:
                ray_s = ray_layer(n, folder)
            row = {
                "n": n,
                **tune,
                "tune_object_store_peak_bytes": tune_peak[0],
                "ray_s": round(ray_s, 2),
                "ray_per_task_s": round(ray_s / n, 4),
                "ray_object_store_peak_bytes": ray_peak[0],
                **prefect_layer(n, folder, db_path),
                "load_average": [round(x, 1) for x in os.getloadavg()],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
        table_rows = []
        for n in args.table_n:
            table_rows.append({"n": n, **table_layer(n, os.path.join(work, "table"))})
            print(json.dumps(table_rows[-1]), flush=True)
    result = {
        "benchmark": "bench_scale",
        **describe(load_before),
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "goal": {"tune_per_trial_s_at_500": GOAL_TUNE_PER_TRIAL_S},
        "rows": rows,
        "table_rows": table_rows,
    }
    at_500 = [r["tune_per_trial_s"] for r in rows if r["n"] == 500]
    if at_500:
        result["goal"]["met"] = at_500[0] <= GOAL_TUNE_PER_TRIAL_S
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
