"""`braintl predict`: the run's own evaluation (its fold ensemble) reproduced from the image
files, unreadable files reported, the champion by default and ``--model latest`` through their
pointers, Grad-CAM overlays; the library's ``probabilities`` for other callers."""

from __future__ import annotations

import csv
import io
import json
import shutil

import nibabel
import numpy as np
import pytest
from dicom_files import write_dicom
from PIL import Image
from pydicom import dcmread
from small_run import small_run
from tolerances import probability_tolerance

from braintl.cli import main
from braintl.data.pseudonyms import SALT_ENV
from braintl.data.tensors import TensorSet
from braintl.errors import UserError
from braintl.predict import probabilities
from braintl.publish import load_model
from braintl.storage import resolve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    return small_run(tmp_path_factory)


def _predict_json(capsys, *argv: str) -> dict:
    assert main(["predict", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_gives_the_ensemble_probabilities_of_the_runs_evaluation(retrained, capsys):
    """Every held-out test image, scored from its file, gets the mean of the probabilities the
    run's fold models computed from the tensor cache; the library's ``probabilities`` gives the
    same from files and from the cached pixels."""
    published = load_model(retrained.record["model"])
    info = published.info
    tests = [
        resolve(m["source"]["metrics_url"]).read_json()["evaluation"]["predictions"]["test"]
        for m in info["members"]
    ]
    files = resolve(info["data"]["tensors_url"]).join("meta.json").read_json()["files"]
    paths = [str(retrained.data / files[index]) for index in tests[0]["index"]]
    expected = np.mean([t["prob"] for t in tests], axis=0)
    assert len(paths) == 8 and len(tests) == 2
    out = _predict_json(capsys, *paths, "--model", retrained.record["run_url"])
    assert out["model"] == retrained.record["model"]
    assert out["unreadable"] == []
    got = {row["file"]: row["probability"] for row in out["predictions"]}
    assert list(got) == paths
    # Up to summation order (other batches; see tolerances), the images decoded alike.
    images = TensorSet.load(info["data"]["tensors_url"]).images
    tol = max(probability_tolerance(m, images) for m in published.members)
    np.testing.assert_allclose(list(got.values()), expected, rtol=0, atol=tol)
    for row in out["predictions"]:
        assert row["label"] == ("tumor" if row["probability"] >= out["threshold"] else "no_tumor")
    assert out["threshold"] == info["threshold"]
    from_files = probabilities(retrained.record["model"], paths)
    np.testing.assert_array_equal(from_files, list(got.values()))
    cached = probabilities(published, images[tests[0]["index"]])
    np.testing.assert_allclose(cached, expected, rtol=0, atol=tol)


def test_probabilities_refuses_pixels_of_another_size_and_unreadable_files(retrained, tmp_path):
    published = load_model(retrained.record["model"])
    with pytest.raises(UserError, match=r"takes uint8 N×3×32×32; preprocess them"):
        probabilities(published, np.zeros((2, 3, 48, 48), np.uint8))
    with pytest.raises(UserError, match="pass uint8 pixels"):
        probabilities(published, np.zeros((2, 3, 32, 32), np.float32))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"1 of 1 images unreadable, e.g. .*empty\.png: empty"):
        probabilities(published, [str(tmp_path / "empty.png")])


def test_unreadable_images_are_listed_with_their_reason_and_the_rest_scored(
    retrained, tmp_path, capsys
):
    scans = tmp_path / "scans"
    (scans / "nested").mkdir(parents=True)
    good = sorted((retrained.data / "yes").iterdir())[:2]
    for path in good:
        shutil.copy(path, scans / "nested" / path.name)
    (scans / "empty.jpg").write_bytes(b"")
    (scans / "notes.png").write_text("not an image")
    (scans / "cut.png").write_bytes(good[0].read_bytes()[:200])
    (scans / "readme.txt").write_text("ignored: not an image extension")
    out_csv = tmp_path / "results.csv"
    code = main(["predict", str(scans), "--runs", str(retrained.out), "--out", str(out_csv)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "2 scored, 3 unreadable" in printed
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(rows) == 5
    errors = {row["file"].rsplit("/", 1)[-1]: row["error"].split(":")[0] for row in rows}
    assert errors == {
        good[0].name: "",
        good[1].name: "",
        "empty.jpg": "empty",
        "notes.png": "not_an_image",
        "cut.png": "corrupt",
    }
    for row in rows[:2]:
        assert 0.0 <= float(row["probability"]) <= 1.0 and row["label"] in ("tumor", "no_tumor")


def test_model_champion_and_latest_resolve_through_their_pointers(retrained, tmp_path, capsys):
    """The champion by default (here the run's model: the first model is promoted), latest on
    request; without a champion, predict names both ways out."""
    image = str(sorted((retrained.data / "no").iterdir())[0])
    out = _predict_json(capsys, image, "--runs", str(retrained.out))
    champion = resolve(retrained.out).join("champion.json").read_json()
    assert out["model"] == champion["model"] == retrained.record["model"]
    out = _predict_json(capsys, image, "--runs", str(retrained.out), "--model", "latest")
    latest = resolve(retrained.out).join("latest.json").read_json()
    assert out["model"] == latest["model"] == retrained.record["model"]

    older = tmp_path / "older"
    resolve(str(older)).join("latest.json").write_json(
        {k: v for k, v in latest.items() if k != "model"}
    )
    assert main(["predict", image, "--runs", str(older)]) == 2
    err = capsys.readouterr().err
    assert "no champion yet" in err and "--model latest" in err and "model promote RUN" in err
    assert main(["predict", image, "--runs", str(older), "--model", "latest"]) == 2
    assert "published no model" in capsys.readouterr().err
    nothing = str(tmp_path / "nothing")
    assert main(["predict", image, "--runs", nothing, "--model", "latest"]) == 2
    assert "no completed run yet" in capsys.readouterr().err


def test_gradcam_writes_one_overlay_per_scored_image(retrained, tmp_path, capsys):
    """The ensemble's overlay: the mean of its members' heatmaps."""
    images = [str(p) for p in sorted((retrained.data / "yes").iterdir())[:3]]
    out = _predict_json(
        capsys, *images, "--runs", str(retrained.out), "--gradcam", str(tmp_path / "cam")
    )
    assert sorted(out["gradcam"]) == sorted(images)
    for url in out["gradcam"].values():
        with Image.open(url) as overlay:
            assert overlay.format == "PNG" and overlay.size == (32, 32)
            assert np.asarray(overlay).std() > 0


def test_dicom_frames_and_nifti_slices_are_rows(retrained, tmp_path, capsys, monkeypatch):
    """A multi-frame DICOM of three phantoms scores as the three PNGs do (its window maps 0..255
    to itself), one row a frame with its hashed SOPInstanceUID; a volume gives one row a slice,
    and a slice asked for alone scores as in its volume."""
    monkeypatch.setenv(SALT_ENV, "predict-salt")
    pngs = sorted((retrained.data / "yes").iterdir())[:3]
    grey = np.stack([np.asarray(Image.open(p).convert("L")) for p in pngs])
    dicom = write_dicom(tmp_path / "c" / "multi.dcm", grey, patient_id="P", window=(127.5, 255))
    stack = np.stack([np.flipud(g).T for g in grey], axis=-1).astype(np.int16)
    volume = tmp_path / "c" / "vol.nii.gz"
    nibabel.save(nibabel.Nifti1Image(stack, np.eye(4)), volume)
    model = ["--model", retrained.record["run_url"]]
    as_png = _predict_json(capsys, *map(str, pngs), *model)["predictions"]
    out = _predict_json(capsys, str(tmp_path / "c"), *model)
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in out["predictions"]}
    frames = [rows[f"multi.dcm#frame={i}"] for i in (1, 2, 3)]
    for frame, png in zip(frames, as_png, strict=True):
        assert frame["probability"] == pytest.approx(png["probability"], abs=1e-5)
    instance = frames[0]["instance"]
    assert instance.startswith("instance-") and {f["instance"] for f in frames} == {instance}
    assert str(dcmread(dicom).SOPInstanceUID) not in json.dumps(out)
    assert {f"vol.nii.gz#slice={i}" for i in range(3)} <= rows.keys()
    alone = _predict_json(capsys, f"{volume}#slice=1", *model)["predictions"]
    assert [r["file"] for r in alone] == [f"{volume}#slice=1"]
    assert alone[0]["probability"] == pytest.approx(rows["vol.nii.gz#slice=1"]["probability"])


def test_rollup_gives_each_patient_or_study_the_maximum_of_its_slices(
    retrained, tmp_path, capsys, monkeypatch
):
    """Two patients' DICOM slices (one patient in two studies) and a NIfTI volume: each roll-up
    row is the maximum of its slice rows, at the model's threshold, keyed by pseudonym (a volume
    by its file); no identifier reaches the output, the rows or the roll-up CSV."""
    monkeypatch.setenv(SALT_ENV, "rollup-salt")
    pngs = (
        sorted((retrained.data / "yes").iterdir())[:3]
        + sorted((retrained.data / "no").iterdir())[:3]
    )
    grey = [np.asarray(Image.open(p).convert("L")) for p in pngs]
    uid = "1.2.826.0.1.3680043.8.498.777"
    studies = {"MRN-ALPHA-1": [f"{uid}.1", f"{uid}.1", f"{uid}.2"], "MRN-BRAVO-2": [f"{uid}.3"] * 3}
    scans = tmp_path / "scans"
    for p, (patient, study_uids) in enumerate(studies.items()):
        for s, study in enumerate(study_uids):
            write_dicom(
                scans / f"p{p}-{s}.dcm",
                grey[3 * p + s],
                patient_id=patient,
                patient_name="Yquem^Hortensia",
                study_uid=study,
                window=(127.5, 255),
            )
    stack = np.stack([np.flipud(g).T for g in grey[:4]], axis=-1).astype(np.int16)
    nibabel.save(nibabel.Nifti1Image(stack, np.eye(4)), scans / "vol.nii.gz")
    model = ["--model", retrained.record["run_url"]]

    for by, sizes in (("patient", [3, 3, 4]), ("study", [2, 1, 3, 4])):
        out_csv = tmp_path / f"{by}.csv"
        out = _predict_json(capsys, str(scans), *model, "--rollup", by, "--out", str(out_csv))
        rolled = out["rollup"]
        assert rolled["by"] == by and rolled["csv"] == str(tmp_path / f"{by}.{by}.csv")
        rolled_csv = (tmp_path / f"{by}.{by}.csv").read_text()
        on_disk = list(csv.DictReader(io.StringIO(rolled_csv)))
        assert [(r[by], r["slices"]) for r in on_disk] == [
            (r[by], str(r["slices"])) for r in rolled["rows"]
        ]
        slices: dict[str, list[dict]] = {}
        for row in out["predictions"]:
            key = row[by] or row["file"].split("#")[0]
            slices.setdefault(key, []).append(row)
        assert [r["slices"] for r in rolled["rows"]] == sizes
        for r in rolled["rows"]:
            top = max(slices[r[by]], key=lambda row: row["probability"])
            assert (r["probability"], r["top"], r["slices"]) == (
                top["probability"],
                top["file"],
                len(slices[r[by]]),
            )
            assert r["label"] == ("tumor" if r["probability"] >= out["threshold"] else "no_tumor")
        assert [r[by][: len(by) + 1] for r in rolled["rows"][:-1]] == [f"{by}-"] * len(sizes[:-1])
        assert rolled["rows"][-1][by] == str(scans / "vol.nii.gz")
        written = json.dumps(out) + out_csv.read_text() + rolled_csv
        for secret in ("MRN-ALPHA", "MRN-BRAVO", "Yquem", "Hortensia", uid):
            assert secret not in written
