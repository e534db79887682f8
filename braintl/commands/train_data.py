"""The data side of ``braintl train``: its options, and their preparation started early.

A cold ``braintl train`` spends its first ~3 s importing torch and the backbone's library and
building the model, and ~4 s listing, decoding, checking and augmenting the images: Python and
numpy work that shares nothing with the imports, but that the GIL keeps from overlapping them
in one process. So the command line forks a process before it imports torch (``start``). That
process parses the data options from the same arguments, with the same definitions
(``add_args``), prepares the data and then waits for the go-ahead before it writes anything
(phantoms, the tensor cache). The command, once its own parse and checks have passed, offers the
job it parsed (``EarlyData.claim``). If the job is equal, the process writes and hands back the
prepared cache. If it differs, or the early parse failed, the process is stopped and the command
prepares the data itself. So errors read as before, a command that fails its checks writes
nothing, and an in-process caller, which gets no fork, has the same result the same way.

Linux only (``fork``): elsewhere the command prepares inline.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import sys
import traceback
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from braintl.commands.data import (
    DataJob,
    add_split_args,
    add_tensor_args,
    add_validation_args,
    tensor_config,
)
from braintl.commands.output import DATA_HELP, OUT_HELP, default_data, default_out
from braintl.data.prepare import Prepared


def add_args(p: argparse.ArgumentParser) -> None:
    """``braintl train``'s options that decide its data; ``job`` reads them back."""
    p.add_argument("--data", default=default_data(), metavar="URL", help=DATA_HELP)
    p.add_argument("--out", default=f"{default_out()}/train", metavar="URL", help=OUT_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    data = p.add_argument_group("data")
    data.add_argument(
        "--cache", metavar="URL", help="where the tensor cache lives (default: --out)"
    )
    add_tensor_args(data)
    add_split_args(data)
    add_validation_args(data)


def job(args: argparse.Namespace) -> DataJob:
    return DataJob(args.data, args.out, args.cache or args.out, tensor_config(args), args.json)


class _QuietParser(argparse.ArgumentParser):
    """Raises instead of printing usage and exiting: the command's own parser reports."""

    def error(self, message: str):
        raise ValueError(message)


def _early_job(argv: list[str]) -> DataJob | None:
    parser = _QuietParser(add_help=False, allow_abbrev=False)
    add_args(parser)
    try:
        args, _ = parser.parse_known_args(argv)
        return job(args)
    except Exception:  # the command parses again and reports what is wrong
        return None


class _Stopped(Exception):
    pass


def _serve(argv: list[str], conn: Connection, commands_end: Connection) -> None:
    """The early process: send the job parsed from ``argv``, prepare it, write only once told
    to go, send back ``("ok", (data_url, prepared))`` or ``("error", (exc, traceback))``."""
    commands_end.close()  # so that the command's end closing reads as EOF here
    allowed = False

    def wait_for_go() -> None:
        nonlocal allowed
        if allowed:
            return
        with contextlib.suppress(EOFError):  # EOF: the command ended without claiming the job
            allowed = conn.recv()
        if not allowed:
            raise _Stopped

    try:
        work = _early_job(argv)
        conn.send(work)
        if work is None:
            return
        try:
            result = ("ok", work.run(before_write=wait_for_go))
        except (_Stopped, KeyboardInterrupt):
            return
        except Exception as exc:
            result = ("error", (exc, traceback.format_exc()))
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            conn.send(result)
        except Exception as exc:  # an exception that does not pickle: send its text
            conn.send(("error", (RuntimeError(repr(exc)), traceback.format_exc())))
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        return


class _RemoteTraceback(Exception):
    def __str__(self) -> str:
        return self.args[0]


class EarlyData:
    """The early process, as the command sees it."""

    def __init__(self, process: BaseProcess, conn: Connection):
        self._process = process
        self._conn = conn

    def claim(self, wanted: DataJob) -> bool:
        """Let the process write and finish if it prepares ``wanted``; else stop it."""
        try:
            parsed = self._conn.recv()
        except EOFError:
            parsed = None
        if parsed == wanted:
            with contextlib.suppress(BrokenPipeError):  # it ended early: its error waits here
                self._conn.send(True)
            return True
        self.stop()
        return False

    def result(self) -> tuple[str, Prepared]:
        """The data URL used and the prepared cache, or the preparation's error, raised here."""
        try:
            status, value = self._conn.recv()
        except EOFError:
            self._process.join()
            raise RuntimeError(
                f"the data preparation process ended without a result (exit code "
                f"{self._process.exitcode}; -9 is usually the kernel's out-of-memory killer): "
                "rerun, or lower --image-size or --memory-budget-gb"
            ) from None
        finally:
            self._conn.close()
        self._process.join()
        if status == "error":
            exc, text = value
            raise exc from _RemoteTraceback(text)
        return value

    def stop(self) -> None:
        """End the process; it has written nothing before its go-ahead."""
        self._process.terminate()
        self._process.join()
        self._conn.close()


_early: EarlyData | None = None


def start(argv: list[str]) -> None:
    """Fork the early process for ``braintl train ARGV``; call before importing torch, while
    this process has one thread. Once per process; the command line only."""
    global _early
    if sys.platform != "linux" or _early is not None:
        return
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    process = context.Process(
        target=_serve, args=(argv, theirs, ours), name="braintl-train-data", daemon=True
    )
    process.start()
    theirs.close()
    _early = EarlyData(process, ours)


def take() -> EarlyData | None:
    """The early process started for this command, once; None without one."""
    global _early
    early, _early = _early, None
    return early
