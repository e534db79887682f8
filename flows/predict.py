"""The predict flow: score a folder of scans in the bucket with a published model.

The CSV (one row per image: probability, label at the model's threshold, or why the image
could not be read) goes next to the folder unless ``csv_url`` says otherwise; on request a
second one rolls the images up per patient or study (``braintl.rollup``).
"""

from __future__ import annotations

from prefect import flow

from braintl.predict import predictions_url
from braintl.rollup import Rollup, rollup_url
from flows.roots import confine
from tasks.model import resolve_model, score_images


@flow(name="predict", log_prints=True)
def predict(
    data_url: str,
    model: str = "champion",
    out_url: str = "braintl-runs",
    csv_url: str | None = None,
    rollup: Rollup | None = None,
) -> dict:
    """Score every image under ``data_url``.

    ``model``: ``champion`` (the model ``out_url/champion.json`` names, ``out_url`` being the
    retrain flow's output), ``latest`` (the last completed run's), a run URL or a model URL.
    ``csv_url``: default ``<data_url>.predictions.csv``, beside the folder.
    ``rollup``: ``patient`` or ``study`` also writes one row per patient (study) of the DICOM
    files, the maximum probability over its images, to ``<csv_url stem>.patient.csv``.
    """
    csv_url = csv_url or predictions_url(data_url)
    rollup_csv_url = rollup_url(csv_url, rollup) if rollup else None
    named_model = None if model in ("champion", "latest") else model
    confine(
        data_url=data_url,
        out_url=out_url,
        csv_url=csv_url,
        rollup_csv_url=rollup_csv_url,
        model=named_model,
    )
    model_url = resolve_model(model, out_url)
    summary = score_images(model_url, data_url, csv_url, rollup)
    print(
        f"{summary['scored']} scored ({summary['tumor']} tumor), {summary['unreadable']} "
        f"unreadable: {summary['csv']}"
    )
    return summary
