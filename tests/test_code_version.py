"""Code-aware runs: a changed library file changes the run key and the cached stages' keys, so
the next run trains; an unchanged tree, wherever it lies, keys the same and ends "Nothing
changed". Each library version runs as what it is: a copy of the source tree, imported by a
fresh interpreter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from braintl import __version__
from braintl.codeversion import PACKAGE, code_version, source_hash

REPO = Path(__file__).resolve().parents[1]

KEYS_SCRIPT = """
import json
from braintl.codeversion import code_version
from braintl.data.prepare import DataConfig
from flows.params import RetrainParams
from tasks.caching import LIBRARY_SOURCE
print(json.dumps({
    "run": RetrainParams().run_key("fingerprint"),
    "tensors": DataConfig().cache_key("fingerprint"),
    "stages": LIBRARY_SOURCE.compute_key(None, {}, {}),
    "code": code_version(),
}))
"""


def copy_source(target: Path) -> Path:
    """braintl, flows and tasks copied under ``target``, as a PYTHONPATH entry."""
    for package in ("braintl", "flows", "tasks"):
        shutil.copytree(
            REPO / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return target


def edit(source: Path, module: str) -> None:
    """A change that alters no behaviour, as the smallest edit a fix would be."""
    path = source / module
    path.write_text(path.read_text() + "\n# edited\n")


def env_for(source: Path) -> dict[str, str]:
    """Run from ``source`` with it on the path (``python -c`` puts the working folder first)."""
    return {**os.environ, "PYTHONPATH": str(source)}


def keys(source: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", KEYS_SCRIPT],
        cwd=source,
        env=env_for(source),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_source_hash_follows_the_files_not_their_place(tmp_path):
    copy = copy_source(tmp_path / "src") / "braintl"
    assert source_hash(copy) == source_hash(PACKAGE)
    renamed = shutil.copytree(copy, tmp_path / "renamed")
    (renamed / "metrics.py").rename(renamed / "scores.py")  # same bytes, another name
    assert source_hash(renamed) != source_hash(PACKAGE)


def test_a_changed_library_file_changes_the_keys_of_what_it_computes(tmp_path):
    from braintl.data.prepare import DataConfig
    from flows.params import RetrainParams

    here = {
        "run": RetrainParams().run_key("fingerprint"),
        "tensors": DataConfig().cache_key("fingerprint"),
    }
    same = keys(copy_source(tmp_path / "same"))
    assert {k: same[k] for k in here} == here
    assert same["code"] == code_version()

    training = copy_source(tmp_path / "training")
    edit(training, "braintl/training/loop.py")
    trained = keys(training)
    assert trained["run"] != here["run"] and trained["stages"] != same["stages"]
    assert trained["code"]["source"] != code_version()["source"]
    assert trained["tensors"] == here["tensors"]  # the tensors' code did not change

    data = copy_source(tmp_path / "data")
    edit(data, "braintl/data/augment.py")
    augmented = keys(data)
    assert augmented["tensors"] != here["tensors"] and augmented["run"] != here["run"]
    assert augmented["stages"] not in (same["stages"], trained["stages"])


RUN_OPTIONS = (
    "--backbones", "scratch_cnn", "--image-size", "32", "--epochs", "1", "--folds", "3",
    "--num-samples", "1", "--json",
)  # fmt: skip


def braintl_run(source: Path, out: Path) -> dict:
    """``braintl run`` with the library at ``source``, against the test's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    script = "import sys; from braintl.cli import main; sys.exit(main())"
    env = {**env_for(source), "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run(
        [sys.executable, "-c", script, "run", "--out", str(out), *RUN_OPTIONS],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return json.loads(done.stdout[done.stdout.index("{") :])


@pytest.mark.slow
def test_a_changed_library_trains_again_an_unchanged_one_does_not(prefect_server, tmp_path):
    source, out = copy_source(tmp_path / "src"), tmp_path / "out"
    hashed = source_hash.__wrapped__  # uncached: the copy changes during the test
    original = hashed(source / "braintl")
    first = braintl_run(source, out)
    assert first["state"] == "Completed"
    unchanged = braintl_run(source, out)
    assert unchanged["state"] == "Nothing changed" and unchanged["run_id"] == first["run_id"]

    edit(source, "braintl/training/loop.py")
    changed = braintl_run(source, out)
    assert changed["state"] == "Completed" and changed["run_id"] != first["run_id"]
    run = out / "runs" / changed["run_id"]
    assert (run / "folds" / "scratch_cnn-full" / "fold-1" / "metrics.json").exists()  # trained
    assert json.loads((out / "latest.json").read_text())["run_id"] == changed["run_id"]
    recorded = {
        record["run_id"]: json.loads((out / "runs" / record["run_id"] / "run.json").read_text())
        for record in (first, changed)
    }
    assert recorded[first["run_id"]]["code"] == {"version": __version__, "source": original}
    assert recorded[changed["run_id"]]["code"]["source"] == hashed(source / "braintl") != original
