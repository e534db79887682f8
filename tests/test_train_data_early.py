"""`braintl train` from the command line prepares its data in a process forked before torch is
imported: the same tensors and the same run as in one process, errors as before, and nothing
written by a command that fails its checks."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import run_python

from braintl.cli import main

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the early process is Linux only")

SMALL = ["--image-size", "32", "--epochs", "2", "--batch-size", "16", "--num-threads", "2"]


def _cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    return run_python(["-m", "braintl.cli", "train", *args], cwd=cwd, timeout=300)


def _no_process_left(out) -> None:
    """No process (the early one included) still runs with ``out`` on its command line."""
    left = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            if str(out).encode() in cmdline.read_bytes():
                left.append(cmdline.parent.name)
    assert left == [], left


def test_command_line_run_equals_the_in_process_run(tmp_path, phantom_dir, capsys):
    args = ["--data", str(phantom_dir), *SMALL, "--json"]
    proc = _cli([*args, "--out", str(tmp_path / "cli")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    forked = json.loads(proc.stdout)
    assert main(["train", *args, "--out", str(tmp_path / "inline")]) == 0
    inline = json.loads(capsys.readouterr().out)

    assert forked["timings"]["data_early"] is True
    assert inline["timings"]["data_early"] is False
    for key in ("fingerprint", "config", "sizes", "protocol"):
        assert forked["data"][key] == inline["data"][key]
    cache = forked["data"]["tensors_url"]
    assert cache.startswith(str(tmp_path / "cli"))
    assert cache.rsplit("/", 1)[1] == inline["data"]["tensors_url"].rsplit("/", 1)[1]
    assert forked["history"] == [
        {**r, "seconds": f["seconds"]}
        for r, f in zip(inline["history"], forked["history"], strict=True)
    ]
    _no_process_left(tmp_path / "cli")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--backbone", "resnet18"], "unknown backbone 'resnet18'"),
        (["--fold", "7"], "braintl: error: --fold 7"),
        (["--image-size", "big"], "argument --image-size: invalid int value: 'big'"),
    ],
)
def test_a_command_that_fails_its_checks_writes_nothing(tmp_path, args, expected):
    """Without --data the early process would write phantoms, and with it a tensor cache:
    neither happens before the command's own checks pass."""
    out = tmp_path / "out"
    proc = _cli(["--out", str(out), *SMALL, *args], tmp_path)
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()
    _no_process_left(out)


def test_a_data_error_in_the_early_process_reads_as_in_one_process(tmp_path, phantom_dir, capsys):
    one_label = tmp_path / "one_label"
    (one_label / "yes").mkdir(parents=True)
    for image in sorted((phantom_dir / "yes").iterdir()):
        (one_label / "yes" / image.name).write_bytes(image.read_bytes())
    args = ["--data", str(one_label), *SMALL]
    proc = _cli([*args, "--out", str(tmp_path / "cli")], tmp_path)
    assert main(["train", *args, "--out", str(tmp_path / "inline")]) == 2
    inline = capsys.readouterr().err.strip()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == inline.splitlines()[-1]
    assert "fewer than two labels" in inline
    _no_process_left(tmp_path / "cli")


def test_a_different_job_stops_the_early_process_and_prepares_inline(tmp_path, phantom_dir):
    """The early process parsed 48 px, the command wants 32 px: the process is stopped before
    writing anything and the command prepares its own data."""
    early_out, out = tmp_path / "early", tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import json, sys
        from braintl.commands import train_data
        train_data.start(["--data", {str(phantom_dir)!r}, "--out", {str(early_out)!r},
                          "--image-size", "48"])
        early = train_data._early
        from braintl.cli import main
        args = ["train", "--data", {str(phantom_dir)!r}, "--out", {str(out)!r}, *{SMALL!r}]
        code = main([*args, "--json"])
        print(json.dumps({{"code": code, "alive": early._process.is_alive()}}))
        """
    )
    proc = run_python(["-c", script], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    metrics, state = json.loads("\n".join(lines[:-1])), json.loads(lines[-1])
    assert state == {"code": 0, "alive": False}
    assert metrics["timings"]["data_early"] is False
    assert metrics["data"]["config"]["preprocess"]["image_size"] == 32
    assert not early_out.exists()


def test_without_data_the_early_process_writes_the_phantoms_once_claimed(tmp_path):
    out = tmp_path / "out"
    proc = _cli(["--out", str(out), *SMALL, "--epochs", "1", "--no-augment", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout)
    assert metrics["timings"]["data_early"] is True
    assert metrics["data"]["url"] == str(out / "phantoms")
    assert (out / "phantoms" / "_COMPLETE.json").exists()
    assert "using synthetic phantoms" in proc.stderr  # --json: messages on stderr, not stdout
