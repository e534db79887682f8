"""The predict flow scores a folder in a real S3-compatible server (moto) with the champion
named there, and writes the CSV (and the roll-up per patient) beside the folder."""

from __future__ import annotations

import csv
import io

import pytest
from small_run import small_run
from temporary_prefect import temporary_prefect
from tolerances import probability_tolerance

from braintl.champion import new_record, write_champion
from braintl.data.tensors import TensorSet
from braintl.predict import predict as predict_images
from braintl.publish import load_model
from braintl.storage import resolve
from flows.predict import predict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    return small_run(tmp_path_factory)


def test_predict_flow_scores_a_bucket_folder_with_the_champion(retrained, s3_bucket, tmp_path):
    bucket = resolve(s3_bucket)
    model = bucket.join("braintl", "runs", retrained.record["run_id"], "model")
    model.fs.put(retrained.record["model"] + "/", model.path, recursive=True)
    record = {**retrained.record, "model": model.url}
    write_champion(bucket.join("braintl").url, new_record(record, "forced", "test", None, None))
    scans = (
        sorted((retrained.data / "yes").iterdir())[:2]
        + sorted((retrained.data / "no").iterdir())[:2]
    )
    for path in scans:
        bucket.join("incoming", "batch-1", path.name).write_bytes(path.read_bytes())
    bucket.join("incoming", "batch-1", "broken.jpg").write_bytes(b"\xff\xd8\xff not really")

    with temporary_prefect(tmp_path / "prefect"):
        state = predict(
            data_url=bucket.join("incoming", "batch-1").url,
            out_url=bucket.join("braintl").url,
            rollup="patient",
            return_state=True,
        )
    assert state.is_completed(), state.message
    summary = state.result()
    csv_loc = bucket.join("incoming", "batch-1.predictions.csv")
    assert summary["csv"] == csv_loc.url
    assert (summary["model"], summary["scored"], summary["unreadable"]) == (model.url, 4, 1)

    rows = {
        r["file"].rsplit("/", 1)[-1]: r
        for r in csv.DictReader(io.StringIO(csv_loc.read_bytes().decode()))
    }
    broken = rows["broken.jpg"]
    assert broken["probability"] == "" and broken["error"].startswith("not_an_image: ")
    published = load_model(retrained.record["model"])
    local = predict_images(published, [str(p) for p in scans])
    # The CSV rounds to 6 decimals (half a unit: 5e-7); the two scorings may sum in other
    # orders (see tolerances).
    images = TensorSet.load(published.info["data"]["tensors_url"]).images
    tol = 5e-7 + max(probability_tolerance(m, images) for m in published.members)
    for expected in local.rows:
        row = rows[expected.file.rsplit("/", 1)[-1]]
        assert float(row["probability"]) == pytest.approx(expected.probability, abs=tol)
        assert row["label"] == expected.label
    # Images without a patient (PNGs) roll up to themselves: the roll-up repeats the rows.
    rolled_csv = bucket.join("incoming", "batch-1.predictions.patient.csv")
    assert summary["rollup"] == {"by": "patient", "rows": 4, "csv": rolled_csv.url}
    rolled = list(csv.DictReader(io.StringIO(rolled_csv.read_bytes().decode())))
    assert {(r["patient"], r["probability"], r["slices"]) for r in rolled} == {
        (r["file"], r["probability"], "1") for r in rows.values() if r["probability"]
    }
