"""The ``braintl`` command: one sub-command module per stage, registered here.

A sub-command's module (torch, scikit-learn, Prefect...) is imported only when that command
runs or shows its help: ``braintl --help`` and ``--version`` import none of them.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Collection

from braintl import __version__
from braintl.errors import UserError

# name: (module, one line for ``braintl --help``), in that listing's order.
COMMANDS = {
    "data": ("braintl.commands.data", "inspect, split and prepare labelled images"),
    "train": ("braintl.commands.train", "train and score one model on one fold"),
    "run": ("braintl.commands.run", "the retrain flow: sweep, cross-validation, results"),
    "predict": ("braintl.commands.predict", "apply a published model to images"),
    "model": ("braintl.commands.model", "show or change the champion (the model in use)"),
    "report": ("braintl.commands.report", "render the HTML report of a run"),
}


def build_parser(load: Collection[str] = tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The parser; the commands in ``load`` with their arguments, the others by name only."""
    parser = argparse.ArgumentParser(
        prog="braintl",
        description="Transfer-learning experiments on brain MRI: data, training, runs.",
    )
    parser.add_argument("--version", action="version", version=f"braintl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        command = sub.add_parser(name, help=summary)
        if name in load:
            importlib.import_module(module).register(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    as_process = argv is None  # the command line, not a caller in the same process
    words = sys.argv[1:] if argv is None else argv
    named = words[:1] if words[:1] and words[0] in COMMANDS else []
    command = named if as_process and not {"-h", "--help"} & set(words) else []
    if command == ["run"]:
        from braintl.commands import run

        run.start_ephemeral_prefect()  # from the command line: its ~7 s overlap the imports
    elif command == ["train"]:
        from braintl.commands import train_data

        train_data.start(sys.argv[2:])  # the data's ~4 s overlap the imports
    try:
        args = build_parser(named).parse_args(argv)  # Ctrl-C during the imports reads as below
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
