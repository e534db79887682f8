"""The ``braintl`` command: one sub-command module per stage, registered here."""

from __future__ import annotations

import argparse
import gc
import sys

from braintl import __version__
from braintl.commands import run, train_data
from braintl.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from braintl.commands import data, model, predict, report, train  # torch, scikit-learn, ...

    parser = argparse.ArgumentParser(
        prog="braintl",
        description="Transfer-learning experiments on brain MRI: data, training, runs.",
    )
    parser.add_argument("--version", action="version", version=f"braintl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (data, train, run, predict, model, report):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    as_process = argv is None  # the command line, not a caller in the same process
    command = sys.argv[1:2] if as_process and not {"-h", "--help"} & set(sys.argv) else []
    if command == ["run"]:
        run.start_ephemeral_prefect()  # from the command line: its ~7 s overlap the imports
    elif command == ["train"]:
        train_data.start(sys.argv[2:])  # the data's ~4 s overlap the imports
    try:
        args = build_parser().parse_args(argv)  # Ctrl-C during the imports reads as below
        if as_process:
            _skip_long_lived()
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"braintl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("braintl: interrupted", file=sys.stderr)
        return 130
    finally:
        if as_process:
            _skip_long_lived()


def _skip_long_lived() -> None:
    """Leave every object alive now out of later garbage collections (``gc.freeze``).

    torch's and torchvision's imports leave about a million long-lived objects; each full
    collection walks them all (0.2 s here), a few times during a run and again while the
    interpreter shuts down: about 1.5 s of a 25 s ``braintl train``, for garbage that is never
    there. Frozen objects are still freed when their last reference goes; a reference cycle
    among them is left to the process's exit. Only for the command line's own process: a
    caller in the same process keeps its collector as it was.
    """
    gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
