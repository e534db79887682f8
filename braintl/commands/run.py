"""``braintl run``: the whole retrain flow (Prefect, Ray) from data to the results table.

With no arguments it runs on synthetic phantoms into ``./braintl-runs`` with ephemeral Prefect,
local Ray and the ``quick`` profile. ``--params`` takes the whole form (``RetrainParams``, what
the Prefect UI shows) as a JSON file or text; flags override single fields of it. Exit codes:
0 a completed run, 1 a run that failed, 2 a usage or input error. Prefect is imported only
inside the handler. While the flow runs, a progress display (trials and folds done, elapsed)
stands for Prefect's log lines, which ``-v`` brings back.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from braintl import progress
from braintl.commands.output import DATA_HELP, OUT_HELP, default_data, default_out, print_json
from braintl.commands.progress import ProgressDisplay
from braintl.errors import UserError
from braintl.storage import resolve

# Flags for the fields people change most: (flag, field, type); sweep.* fields are nested.
FIELD_FLAGS = (
    ("--epochs", "epochs", int),
    ("--folds", "folds", int),
    ("--image-size", "image_size", int),
    ("--batch-size", "batch_size", int),
    ("--seed", "seed", int),
    ("--test-fraction", "test_fraction", float),
    ("--weights", "weights", str),
    ("--group-by", "group_by", str),
    ("--manifest", "manifest_url", str),
    ("--num-samples", "sweep.num_samples", int),
    ("--cpus-per-trial", "sweep.cpus_per_trial", float),
    ("--gpus-per-trial", "sweep.gpus_per_trial", float),
    ("--cpus-per-fold", "cpus_per_fold", float),
    ("--gpus-per-fold", "gpus_per_fold", float),
)
RUN_FAILED = 1


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--params",
        metavar="FILE|JSON",
        help="the whole form (RetrainParams) as a JSON file or text; flags override its fields",
    )
    p.add_argument("--data", metavar="URL", help=DATA_HELP)
    p.add_argument("--out", metavar="URL", help=OUT_HELP.replace("%(default)s", default_out()))
    p.add_argument(
        "--profile",
        choices=("quick", "cpu", "paper"),
        help="quick: a smoke test of the plumbing (default); cpu: the best models 2 cores train "
        "in 30 minutes; paper: the seed's settings, on GPUs",
    )
    p.add_argument("--protocol", choices=("groups", "paper"), help="groups: leak-free (default)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--crop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="crop each scan to the brain before resizing",
    )
    p.add_argument("--ray-address", metavar="ADDR", help="an existing Ray cluster; default: local")
    p.add_argument("--force", action="store_true", help="run even when nothing changed")
    p.add_argument("--backbones", metavar="A,B", help="comma-separated backbone names")
    p.add_argument("--strategies", metavar="A,B", help="comma-separated strategies")
    p.add_argument(
        "--tuning",
        choices=("sweep", "seed"),
        help="sweep hyperparameters, or train the seed's own settings (paper's default); "
        "sweep settings such as --num-samples ask for a sweep",
    )
    for flag, field, kind in FIELD_FLAGS:
        p.add_argument(flag, type=kind, dest=field, metavar=kind.__name__.upper())
    p.add_argument(
        "--external",
        metavar="URL",
        action="append",
        dest="external_data_urls",
        help="a labelled folder from another source (a folder per label), repeatable: the "
        "published model is scored on it after training, copies of development scans removed",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Prefect's own log lines (task states, the flow's messages) beside the progress",
    )
    p.set_defaults(handler=run_flow)


def params_from_args(args: argparse.Namespace) -> dict:
    """``--params``, then the environment's defaults, then the flags given: whatever stays
    unset is the profile's."""
    params = _params_file(args.params) if args.params else {}
    params.setdefault("out_url", default_out())
    if default_data() is not None:
        params.setdefault("data_url", default_data())
    values = {
        "profile": args.profile,
        "data_url": args.data,
        "out_url": args.out,
        "protocol": args.protocol,
        "augment": args.augment,
        "crop": args.crop,
        "ray_address": args.ray_address,
        "backbones": _names(args.backbones),
        "strategies": _names(args.strategies),
        "tuning": args.tuning,
        "external_data_urls": args.external_data_urls,
        **{field: getattr(args, field) for _, field, _ in FIELD_FLAGS},
    }
    for field, value in values.items():
        if value is None:
            continue
        if field.startswith("sweep."):
            params.setdefault("sweep", {})[field.removeprefix("sweep.")] = value
        else:
            params[field] = value
    if args.force:
        params["force"] = True
    return params


def _params_file(text: str) -> dict:
    """A JSON object from a file path or given inline."""
    source = text
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise UserError(f"--params {text}: no such file; give a JSON file or JSON text")
        source = path.read_text()
    try:
        params = json.loads(source)
    except json.JSONDecodeError as exc:
        raise UserError(f"--params {text}: not JSON ({exc})") from None
    if not isinstance(params, dict):
        raise UserError(f"--params {text}: expected a JSON object of RetrainParams fields")
    return params


@functools.cache
def start_ephemeral_prefect() -> threading.Thread | None:
    """Start Prefect's ephemeral server in the background; None with a server configured.
    ``braintl run`` calls it before importing anything heavy, so the server's ~7 s start
    overlaps the ~7 s of importing torch, Ray and the flow. Once per process."""
    # Prefect reads its settings once, at import: its 20 s start-up limit is too short for a
    # busy machine (the server then fails the run), so give the throwaway server two minutes.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    # The temporary server's telemetry heartbeat fails offline and logs a traceback ("database
    # is locked") into a successful run's output; a throwaway server has nothing to report.
    # The same goes for the client's telemetry and its first-run notice on a terminal.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")

    def start() -> None:
        with contextlib.suppress(Exception):  # the flow call starts it again and reports why
            SubprocessASGIServer().start()

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def prefect_console(verbose: bool) -> Iterator[None]:
    """Prefect's INFO lines off the terminal unless ``verbose``: the progress display stands
    for them. Warnings and errors stay; the Prefect server (its UI) still gets every line."""
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    levels = [h.level for h in handlers]
    if not verbose:
        for handler in handlers:
            handler.setLevel(max(handler.level, logging.WARNING))
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def run_flow(args: argparse.Namespace) -> int:
    from braintl.caveats import SMOKE_TEST_PROFILE
    from flows.params import RetrainParams  # no Prefect: bad values are refused before it loads

    try:
        params = RetrainParams(**params_from_args(args))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors()
        )
        raise UserError(f"bad parameter value: {problems}") from None
    from flows.retrain import retrain

    server = start_ephemeral_prefect()  # the one braintl.cli started, if it did
    if server is not None:
        server.join()
    if not args.json:
        data = params.data_url or "synthetic phantoms"
        models = f"{len(params.pairs())} models × {params.folds} folds"
        profile = f"profile {params.profile}"
        if params.profile == SMOKE_TEST_PROFILE:
            profile += " (a smoke test of the plumbing; --profile cpu trains models to use)"
        print(f"braintl run: {data} → {params.out_url}, {profile}, {models}")
    start = time.perf_counter()
    display = ProgressDisplay(sys.stderr, notes=not args.verbose)
    with prefect_console(args.verbose), progress.listening(display), contextlib.closing(display):
        state = retrain(params, return_state=True)
    seconds = time.perf_counter() - start
    if not state.is_completed():
        print(f"braintl: the retrain flow ended {state.name}: {state.message}", file=sys.stderr)
        return RUN_FAILED
    record = state.result()
    if args.json:
        print_json({"state": state.name, "seconds": round(seconds, 1), **record})
        return 0
    if state.name == "Nothing changed":
        print(f"\nnothing changed since run {record['run_id']} (use --force to run again)")
    print("\n" + resolve(record["results"]["table.md"]).read_bytes().decode())
    print(f"run:    {record['run_url']}   ({seconds:.0f} s)")
    if record.get("model"):
        print(f"model:  {record['model']}{_headline(record['model'])}")
    if record.get("report"):
        print(f"report: {record['report']['index.html']}")
    return 0


def _headline(model_url: str) -> str:
    """The published model's test AUC with its interval, the figure its card and the report lead
    with (the table above is the fold models' spread); empty for packages without one."""
    info = resolve(model_url).join("model.json").read_json()
    auc = ((info.get("metrics") or {}).get("test") or {}).get("auc") or {}
    if auc.get("estimate") is None:
        return ""
    return (
        f"\n        {info['estimand']}: test AUC {auc['estimate']:.3f} "
        f"(95% CI {auc['low']:.3f}–{auc['high']:.3f})"
    )
