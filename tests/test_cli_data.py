"""`braintl data`: output on good input, one-line errors with the fix on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from braintl.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_json(capsys, phantom_dir):
    code, out, _ = run(capsys, "data", "inspect", str(phantom_dir), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["per_label"] == {"no_tumor": 24, "tumor": 24}
    assert len(result["fingerprint"]) == 16 and result["quarantined"] == []


@pytest.mark.real_data
def test_inspect_real_table(capsys, real_data):
    code, out, _ = run(capsys, "data", "inspect", str(real_data))
    assert code == 0
    assert "tumor" in out and "duplicate groups:" in out and "fingerprint" in out


@pytest.mark.real_data
@pytest.mark.parametrize("protocol, leaks", [("groups", False), ("paper", True)])
def test_split_real(capsys, real_data, protocol, leaks):
    code, out, _ = run(capsys, "data", "split", str(real_data), "--protocol", protocol, "--json")
    assert code == 0
    result = json.loads(out)
    assert (result["leakage"] > 0) is leaks
    assert result["leaky"] is leaks
    parts = result["parts"]
    assert set(parts) == {"test", "fold0", "fold1", "fold2", "fold3", "fold4"}
    assert parts["fold0"]["train"]["total"] > 3 * parts["fold0"]["val"]["total"]


def test_prepare_without_data_uses_phantoms(capsys, tmp_path):
    out_dir = tmp_path / "out"
    code, out, _ = run(capsys, "data", "prepare", "--out", str(out_dir), "--image-size", "32")
    assert code == 0
    assert "synthetic phantoms" in out and "tensor cache built" in out
    code, out, _ = run(capsys, "data", "prepare", "--out", str(out_dir), "--image-size", "32")
    assert "tensor cache reused" in out


def _folder(root: Path, layout: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 255, (40, 40), dtype=np.uint8)
            Image.fromarray(arr).save(root / folder / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "args, expected",
    [
        (["data", "inspect", "{missing}"], "does not exist"),
        (["data", "inspect", "{empty}"], "holds no label folders"),
        (["data", "inspect", "{one_label}"], "fewer than two labels"),
        (["data", "inspect", "{odd_folder}"], "'scans' not in the label map"),
        (["data", "split", "{good}", "--folds", "0"], "--folds: "),
        (["data", "split", "{good}", "--test-fraction", "0.9"], "--test-fraction: "),
        (["data", "inspect", "{good}", "--label-map", "yes"], "FOLDER=LABEL"),
        (["data", "prepare", "{good}", "--out", "{out}", "--image-size", "4"], "image-size"),
        (["data", "inspect", "s3://braintl-no-such-bucket/data"], "s3://braintl-no-such-bucket"),
        (["data", "prepare", "{good}", "--out", "{a_file}/out"], "cannot write"),
    ],
)
def test_errors_are_one_line_with_a_fix(capsys, tmp_path, monkeypatch, args, expected):
    # Unreachable storage: an S3 endpoint where nothing listens.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    paths = {
        "missing": tmp_path / "nope",
        "empty": _folder(tmp_path / "empty", {}),
        "one_label": _folder(tmp_path / "one", {"yes": 2}),
        "odd_folder": _folder(tmp_path / "odd", {"yes": 2, "no": 2, "scans": 1}),
        "good": _folder(tmp_path / "good", {"yes": 3, "no": 3}),
        "out": tmp_path / "out",
        "a_file": tmp_path / "a_file",
    }
    paths["a_file"].write_text("a file where a folder should be")
    argv = [a.format(**paths) for a in args]
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("braintl: error: ")
    assert expected in lines[0]
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_console_script(tmp_path, phantom_dir):
    exe = Path(sys.executable).parent / "braintl"
    proc = subprocess.run(
        [str(exe), "data", "inspect", str(phantom_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files"] == 48
