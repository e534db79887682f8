"""Nothing identifying leaves: a whole `braintl run` on DICOM files carrying a recognisable
patient name, ID, birth date and UIDs, then a search for them (and for the salt) in its output,
every file it wrote (results, latest.json, report, model card, caches) and Prefect's database
(logs, artifacts, task results)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dicom_files import write_dicom

from braintl.data.phantoms import make_phantom, phantom_rng
from braintl.data.pseudonyms import SALT_ENV

SALT = "salt-never-printed-5e1f"
NAME, BIRTH = "Zzyzx^Quintessa", "19230517"
ID_PREFIX = "MRN-4815162"
UID_ROOT = "1.2.826.0.1.3680043.8.498"  # pydicom's root: every UID these files carry
SECRETS = ("Zzyzx", "Quintessa", BIRTH, ID_PREFIX, UID_ROOT, SALT)


def _write_patients(root: Path, per_label: int = 8, slices: int = 2) -> None:
    for folder in ("yes", "no"):
        for p in range(per_label):
            study = f"{UID_ROOT}.{len(folder)}{p}"
            for s in range(slices):
                rgb = make_phantom(phantom_rng(0, folder, p * slices + s), folder == "yes", 48)
                write_dicom(
                    root / folder / f"s{p:02d}{s}.dcm",
                    rgb[..., 0].astype(np.uint16) * 8,  # 11 bits, rescaled back, windowed
                    patient_id=f"{ID_PREFIX}{folder}{p}",
                    patient_name=NAME,
                    birth_date=BIRTH,
                    study_uid=study,
                    series_uid=f"{study}.1",
                    slope=0.125,
                    window=(127.5, 255),
                )


def _leaks(data: bytes) -> list[str]:
    return [s for s in SECRETS if s.encode() in data]


@pytest.mark.slow
def test_no_identifier_in_any_output(tmp_path):
    data = tmp_path / "dicom"
    _write_patients(data)
    assert any(UID_ROOT.encode() in p.read_bytes() for p in data.rglob("*.dcm"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_"))}
    options = ["--backbones", "scratch_cnn", "--image-size", "32", "--epochs", "1"]
    options += ["--folds", "3", "--num-samples", "1", "--test-fraction", "0.25"]
    log = tmp_path / "output.log"  # scanned with the rest
    with log.open("wb") as out:
        # A session of its own, ended afterwards: an ephemeral Prefect server can outlive it.
        run = subprocess.Popen(
            [Path(sys.executable).with_name("braintl"), "run", "--data", str(data), *options],
            cwd=tmp_path,
            env={**env, "PREFECT_HOME": str(tmp_path / "prefect"), SALT_ENV: SALT},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = run.wait(timeout=900)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGTERM)
    assert code == 0, log.read_text(errors="replace")[-4000:]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and data not in p.parents]
    names = {p.name for p in written}
    expected = {"results.json", "latest.json", "index.html", "MODEL_CARD.md", "prefect.db"}
    assert expected <= names, sorted(names)  # prefect.db: its logs, artifacts and results
    for path in written:
        assert _leaks(path.read_bytes()) == [], path
