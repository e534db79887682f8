"""The ``braintl`` command: one sub-command module per stage, registered here."""

from __future__ import annotations

import argparse
import sys

from braintl import __version__
from braintl.commands import run
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
    if argv is None and sys.argv[1:2] == ["run"] and not {"-h", "--help"} & set(sys.argv):
        run.start_ephemeral_prefect()  # from the command line: its ~7 s overlap the imports
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"braintl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("braintl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
