"""``braintl model status|promote RUN|rollback``: which model is in use, and changing it by hand.

Every change is recorded with its reason in ``OUT/champions.jsonl``; a promotion by hand is
recorded as ``forced`` and a return to the earlier champion as ``rollback``.
"""

from __future__ import annotations

import argparse

from braintl import champion
from braintl.commands.output import OUT_HELP, default_out, print_json, table
from braintl.errors import UserError

HISTORY_SHOWN = 10


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("status", "promote", "rollback"))
    p.add_argument("run", nargs="?", metavar="RUN", help="promote: a run id under OUT, or its URL")
    p.add_argument(
        "--out", default=default_out(), metavar="URL", help="output of braintl run; " + OUT_HELP
    )
    p.add_argument("--reason", metavar="TEXT", help="why (recorded with the change)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=model_command)


def model_command(args: argparse.Namespace) -> int:
    if (args.action == "promote") != bool(args.run):
        raise UserError(
            "promote needs RUN (a run id under --out, or a run URL); status and rollback take none"
        )
    reason = args.reason or f"{args.action} by hand, no reason given"
    if args.action == "promote":
        record = champion.promote(args.out, args.run, reason)
    elif args.action == "rollback":
        record = champion.rollback(args.out, reason)
    else:
        record = champion.read_champion(args.out)
    history = champion.read_history(args.out)
    if args.json:
        print_json({"champion": record, "history": history})
        return 0
    if record is None:
        print(f"no champion under {args.out}: no run's model was promoted yet")
        return 0
    verb = {"status": "", "promote": "promoted: ", "rollback": "rolled back: "}[args.action]
    print(f"{verb}champion {record['run_id']} ({record['promoted_by']}, {record['time']})")
    print(f"model {record['model']}\nreason: {record['reason']}")
    rows = [
        (r["sequence"], r["time"], r["run_id"], r["promoted_by"], r["reason"])
        for r in history[-HISTORY_SHOWN:]
    ]
    print(table(("#", "time", "run", "by", "reason"), rows))
    return 0
