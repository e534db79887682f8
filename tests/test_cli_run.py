"""`braintl run`'s command line: the whole form through --params, flags over it, environment
defaults, --version, and exit codes (0 done, 1 a failed run, 2 a usage or input error)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from braintl import progress
from braintl.cli import build_parser, main
from braintl.commands.progress import ProgressDisplay, drawable
from braintl.commands.run import params_from_args, prefect_console
from braintl.data.phantoms import write_phantom_dataset
from flows.params import PROFILES, RetrainParams


def _params(*argv: str) -> RetrainParams:
    return RetrainParams(**params_from_args(build_parser().parse_args(["run", *argv])))


def test_params_file_is_the_form_and_flags_override_it(tmp_path, monkeypatch):
    monkeypatch.delenv("BRAINTL_OUT", raising=False)
    monkeypatch.delenv("BRAINTL_DATA", raising=False)
    form = {"protocol": "paper", "epochs": 7, "seed": 3, "sweep": {"num_samples": 4}}
    path = tmp_path / "params.json"
    path.write_text(json.dumps(form))
    from_file = _params("--params", str(path))
    assert (from_file.protocol, from_file.epochs, from_file.seed) == ("paper", 7, 3)
    assert from_file.sweep.num_samples == 4 and from_file.out_url == "braintl-runs"
    assert from_file.folds == 3  # unset: the quick profile's

    flags = _params(
        "--params", json.dumps(form), "--epochs", "2", "--weights", "imagenet",
        "--test-fraction", "0.2", "--augment", "--cpus-per-trial", "0.5",
        "--gpus-per-fold", "0", "--num-samples", "6", "--batch-size", "18",
    )  # fmt: skip
    assert (flags.protocol, flags.epochs, flags.weights) == ("paper", 2, "imagenet")
    assert (flags.test_fraction, flags.augment, flags.batch_size) == (0.2, True, 18)
    assert (flags.sweep.num_samples, flags.sweep.cpus_per_trial) == (6, 0.5)
    cluster = ("--ray-address", "h:6379", "--out", "s3://b/r")
    assert _params("--no-augment", "--profile", "paper", *cluster).augment is False


def test_cpu_profile_presets_the_studied_settings_and_explicit_fields_win():
    preset = PROFILES["cpu"]
    cpu = _params("--profile", "cpu")
    assert {field: getattr(cpu, field) for field in preset if field != "sweep"} == {
        field: value for field, value in preset.items() if field != "sweep"
    }
    assert cpu.sweep.model_dump(include=set(preset["sweep"])) == preset["sweep"]
    assert cpu.weights == "imagenet" and cpu.augment and cpu.sweep.gpus_per_trial == 0
    assert set(cpu.sweep_groups()) == {"imagenet", "none"}  # scratch_cnn has no ImageNet weights
    mine = _params(
        "--profile", "cpu", "--weights", "none", "--image-size", "64", "--crop",
        "--no-augment", "--epochs", "2", "--num-samples", "3", "--folds", "4",
    )  # fmt: skip
    assert (mine.weights, mine.image_size, mine.crop, mine.augment) == ("none", 64, True, False)
    assert (mine.epochs, mine.sweep.num_samples, mine.folds) == (2, 3, 4)
    assert mine.batch_size == preset["batch_size"]  # what was not given stays the profile's
    assert _params("--crop").crop and not _params().crop  # quick crops only when asked


def test_environment_gives_the_default_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINTL_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("BRAINTL_DATA", str(tmp_path / "scans"))
    params = _params()
    assert (params.out_url, params.data_url) == (str(tmp_path / "out"), str(tmp_path / "scans"))
    assert _params("--out", str(tmp_path / "elsewhere")).out_url == str(tmp_path / "elsewhere")
    assert build_parser().parse_args(["train"]).out == f"{tmp_path / 'out'}/train"


@pytest.mark.parametrize(
    "params, expected",
    [
        ("missing.json", "--params missing.json: no such file"),
        ("{not json", "--params {not json: not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"epochs": 0}', "epochs: Input should be greater than or equal to 1"),
        ('{"colour": "blue"}', "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_params_are_usage_errors(tmp_path, monkeypatch, capsys, params, expected):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "list.json"
    path.write_text(params)
    given = str(path) if params.startswith("[") else params
    assert main(["run", "--params", given]) == 2
    assert expected in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [path]  # nothing written


def test_version(capsys):
    from braintl import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"braintl {__version__}"


@pytest.mark.parametrize(
    "argv, heavy",
    [
        (["--version"], ("torch", "braintl.commands", "prefect", "sklearn")),
        (["--help"], ("torch", "braintl.commands", "prefect", "sklearn")),
        (["model", "--help"], ("torch", "braintl.commands.train", "braintl.commands.data")),
    ],
    ids=["version", "help", "model-help"],
)
def test_the_quick_answers_import_no_other_command(argv, heavy):
    """A command's module (torch, Prefect...) loads only for that command: ``braintl --help``
    and ``--version`` answer at once, and every command is still listed."""
    probe = (
        "import json, runpy, sys\n"
        f"sys.argv = ['braintl', *{argv!r}]\n"
        "try:\n    runpy.run_module('braintl.cli', run_name='__main__')\n"
        "except SystemExit as exit_:\n    code = exit_.code\n"
        "print(json.dumps({'code': code, 'loaded': sorted(sys.modules)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    answer = json.loads(out.splitlines()[-1])
    assert answer["code"] == 0
    assert not [m for m in answer["loaded"] if m.startswith(heavy)]
    if argv == ["--help"]:
        for command in ("data", "train", "run", "predict", "model", "report"):
            assert f"    {command} " in out


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_progress_display_draws_what_the_flow_reports(terminal):
    stream = io.StringIO()
    assert not drawable(stream)  # no terminal behind it: plain lines unless told otherwise
    display = ProgressDisplay(stream, terminal)
    with progress.listening(display):
        for done in (0, 1, 1, 2):  # a repeated report (the sweep's last, then the flow's) once
            progress.report("trials random-init", done, 2)
        progress.report("folds", 0, 4)
        progress.note("resuming interrupted run R: OUT/runs/R")
    progress.report("folds", 1, 4)  # nobody listens any more: no effect, no error
    display.close()
    text = stream.getvalue()
    if terminal:
        assert "\r" in text and "trials random-init: 2/2" in text and "folds: 0/4" in text
        assert "resuming interrupted run R: OUT/runs/R\n" in text
    else:
        lines = [line.split("] ", 1)[1] for line in text.splitlines()]
        assert lines == [f"trials random-init: {n}/2" for n in range(3)] + [
            "folds: 0/4",
            "resuming interrupted run R: OUT/runs/R",
        ]
        assert "\r" not in text and "\x1b" not in text


def test_prefect_info_lines_leave_the_terminal_unless_verbose():
    import prefect.main  # noqa: F401  Prefect's logging set-up, as the flow's own import runs it
    from prefect.logging.handlers import PrefectConsoleHandler

    console = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    assert console, "Prefect's console handler is not set up"
    before = [h.level for h in console]
    with prefect_console(verbose=False):
        quiet = [max(level, logging.WARNING) for level in before]
        assert [h.level for h in console] == quiet
    with prefect_console(verbose=True):
        assert [h.level for h in console] == before
    assert [h.level for h in console] == before  # restored for whatever runs next


@pytest.mark.usefixtures("prefect_server")
def test_a_failed_run_exits_1_and_says_why(tmp_path, capsys):
    data = write_phantom_dataset(str(tmp_path / "scans"), {"yes": 6}, size=64)  # one label only
    code = main(["run", "--data", data, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "the retrain flow ended Failed" in err and "fewer than two labels" in err


@pytest.mark.slow
def test_a_first_run_is_quiet_and_ends_with_the_report(tmp_path):
    """A new user's first command, in a fresh process with Prefect's temporary server and a
    local Ray: no traceback, no ERROR line, no Ray notice to worry about, the report last.
    Its output is a pipe here, as in CI: the progress display gives plain lines for Prefect's
    INFO lines (back with -v), and no carriage returns or escape codes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_"))}
    options = ["--backbones", "scratch_cnn", "--image-size", "32", "--epochs", "1"]
    options += ["--folds", "3", "--num-samples", "1"]
    done = subprocess.run(
        [Path(sys.executable).with_name("braintl"), "run", *options],
        cwd=tmp_path,
        env={**env, "PREFECT_HOME": str(tmp_path / "prefect")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for alarming in ("Traceback", "| ERROR", "Token authentication is enabled"):
        assert alarming not in output, output[-4000:]
    assert "| INFO    | Task run" not in output and "\r" not in output and "\x1b" not in output
    shown = [line.split("] ", 1)[1] for line in done.stderr.splitlines() if line.startswith("[")]
    assert shown[0].startswith("new run ") and "/braintl-runs/runs/" in shown[0]  # which run
    assert shown[1] == "trials random-init: 0/1" and "trials random-init: 1/1" in shown
    assert shown[-1] == "folds: 2/2", done.stderr[-4000:]
    first, last = done.stdout.splitlines()[0], done.stdout.strip().splitlines()[-1]
    assert first.startswith("braintl run: synthetic phantoms → braintl-runs, profile quick")
    assert "(a smoke test of the plumbing; --profile cpu trains models to use)" in first
    report = last.removeprefix("report: ")
    assert last.startswith("report: ") and (tmp_path / report).is_file(), last
