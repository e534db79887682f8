"""``braintl run``: the whole retrain flow (Prefect, Ray) from data to the results table.

With no arguments it runs on synthetic phantoms into ``./braintl-runs`` with ephemeral Prefect,
local Ray and the ``quick`` profile. Prefect is imported only here, inside the handler.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import threading
import time

from pydantic import ValidationError

from braintl.commands.output import print_json
from braintl.errors import UserError
from braintl.storage import resolve


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the retrain flow: sweep, cross-validation, results")
    p.add_argument("--data", metavar="URL", help="labelled images; omitted: synthetic phantoms")
    p.add_argument("--out", metavar="URL", help="runs and latest.json (default: braintl-runs)")
    p.add_argument("--profile", choices=("quick", "paper"), default="quick")
    p.add_argument("--ray-address", metavar="ADDR", help="an existing Ray cluster; default: local")
    p.add_argument("--force", action="store_true", help="run even when nothing changed")
    p.add_argument("--epochs", type=int)
    p.add_argument("--folds", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--backbones", metavar="A,B", help="comma-separated backbone names")
    p.add_argument("--strategies", metavar="A,B", help="comma-separated strategies")
    p.add_argument(
        "--tuning",
        choices=("sweep", "seed"),
        help="sweep hyperparameters, or train the seed's own settings (paper's default)",
    )
    p.add_argument("--num-samples", type=int, help="sweep samples (asks for a sweep)")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.set_defaults(handler=run_flow)


def params_from_args(args: argparse.Namespace) -> dict:
    """Only the options given, so the profile presets everything else."""
    values = {
        "profile": args.profile,
        "data_url": args.data,
        "out_url": args.out,
        "ray_address": args.ray_address,
        "epochs": args.epochs,
        "folds": args.folds,
        "image_size": args.image_size,
        "backbones": _names(args.backbones),
        "strategies": _names(args.strategies),
        "tuning": args.tuning,
    }
    params = {k: v for k, v in values.items() if v is not None}
    if args.force:
        params["force"] = True
    if args.num_samples is not None:
        params["sweep"] = {"num_samples": args.num_samples}
    return params


@functools.cache
def start_ephemeral_prefect() -> threading.Thread | None:
    """Start Prefect's ephemeral server in the background; None with a server configured.
    ``braintl run`` calls it before importing anything heavy, so the server's ~7 s start
    overlaps the ~7 s of importing torch, Ray and the flow. Once per process."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    def start() -> None:
        with contextlib.suppress(Exception):  # the flow call starts it again and reports why
            SubprocessASGIServer().start()

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    return thread


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def run_flow(args: argparse.Namespace) -> int:
    from flows.retrain import RetrainParams, retrain

    try:
        params = RetrainParams(**params_from_args(args))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors()
        )
        raise UserError(f"bad parameter value: {problems}") from None
    server = start_ephemeral_prefect()  # the one braintl.cli started, if it did
    if server is not None:
        server.join()
    start = time.perf_counter()
    state = retrain(params, return_state=True)
    seconds = time.perf_counter() - start
    if not state.is_completed():
        raise UserError(f"the retrain flow ended {state.name}: {state.message}")
    record = state.result()
    if args.json:
        print_json({"state": state.name, "seconds": round(seconds, 1), **record})
        return 0
    if state.name == "Nothing changed":
        print(f"\nnothing changed since run {record['run_id']} (use --force to run again)")
    print("\n" + resolve(record["results"]["table.md"]).read_bytes().decode())
    print(f"results: {record['run_url']}   ({seconds:.0f} s)")
    return 0
