"""Model stages: publish a run's best model, resolve a warm start, score images with a model."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from braintl import predict, publish, rollup, runlease
from braintl.markdown import markdown_escape
from braintl.storage import resolve
from tasks.data import STORAGE_RETRIES


@task(name="publish-model", **STORAGE_RETRIES)
def publish_model(run_url: str) -> dict[str, str]:
    """Package the run's fold ensemble (members' weights, preprocessing, threshold, card) under
    ``model/``; a link to its card becomes an artifact. Only while the run holds its lease."""
    runlease.confirm(run_url)
    urls = publish.publish_model(run_url)
    create_markdown_artifact(
        resolve(urls["card"]).read_bytes().decode(),
        key="published-model",
        description=f"model card, {urls['model']}",
    )
    return urls


@task(name="warm-start", **STORAGE_RETRIES)
def warm_start(weights: str, out_url: str) -> dict | None:
    """``previous`` or a published model URL → the backbone weights a warm start loads."""
    return publish.warm_start(weights, out_url)


@task(name="resolve-model", **STORAGE_RETRIES)
def resolve_model(spec: str, out_url: str) -> str:
    """``champion``, ``latest``, a run URL or a model URL → the published model's URL."""
    return publish.resolve_model_url(spec, out_url)


@task(name="score-images", **STORAGE_RETRIES)
def score_images(
    model_url: str, data_url: str, csv_url: str, by: rollup.Rollup | None = None
) -> dict:
    """Score every image under ``data_url`` and write the CSV (and the roll-up ``by`` patient or
    study beside it); returns counts and URLs, and leaves the unreadable files as an artifact."""
    published = publish.load_model(model_url)
    result = predict.predict(published, predict.find_images([data_url]))
    target = resolve(csv_url)
    target.write_bytes(result.to_csv().encode())
    if by:
        rolled = rollup.rollup(result, by)
        rolled_url = rollup.rollup_url(csv_url, by)
        resolve(rolled_url).write_bytes(rollup.rollup_csv(rolled, by).encode())
    tumor = sum(row.label == publish.POSITIVE_LABEL for row in result.rows)
    lines = [
        f"# Predictions for {markdown_escape(data_url)}",
        "",
        f"Model {markdown_escape(model_url)}, tumor when probability >= {result.threshold:.4f}.",
        "",
        f"{len(result.rows)} scored ({tumor} tumor), {len(result.unreadable)} unreadable. "
        f"CSV: {markdown_escape(target.url)}",
    ]
    if by:
        positive = sum(r.label == publish.POSITIVE_LABEL for r in rolled)
        lines += [
            "",
            f"By {by} (maximum over its images): {len(rolled)}, {positive} tumor. "
            f"CSV: {markdown_escape(rolled_url)}",
        ]
    lines += [
        f"- unreadable {markdown_escape(u.file)}: {markdown_escape(f'{u.reason}: {u.detail}')}"
        for u in result.unreadable
    ]
    create_markdown_artifact("\n".join(lines), key="predictions", description=target.url)
    return {
        "model": model_url,
        "data_url": data_url,
        "csv": target.url,
        "scored": len(result.rows),
        "tumor": tumor,
        "unreadable": len(result.unreadable),
    } | ({"rollup": {"by": by, "rows": len(rolled), "csv": rolled_url}} if by else {})
