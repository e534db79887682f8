"""A run's report: gather, compute, render, write ``report/`` under the run.

``write_report(run_url)`` writes ``index.html`` (self-contained), ``report.json`` (every figure
the page shows), ``table.csv`` and ``table.md``; it runs as the flow's report task and again as
``braintl report RUN_URL`` after a template change.
"""

from __future__ import annotations

from datetime import UTC, datetime

from braintl.caveats import (
    SMOKE_TEST_PROFILE,
    run_warnings,
    seed_comparison,
    synthetic_data,
)
from braintl.data.manifest import Manifest, Record
from braintl.ensemble import BOOTSTRAP_SEED
from braintl.metrics import json_safe
from braintl.replica import departures
from braintl.report import external, plots
from braintl.report.collect import Run, fold_predictions, load_run, load_tensors, sibling_runs
from braintl.report.compare import (
    DELONG_METHOD,
    ESTIMATE_NOTE,
    delong_against_best,
    leakage_audit,
    model_statistics,
)
from braintl.report.estimands import ensemble_estimand
from braintl.report.explain import gradcam_examples
from braintl.report.render import render_html
from braintl.report.seed import SEED_PROTOCOL_NOTE, SEED_SOURCE, TABLE_1, seed_best, seed_row
from braintl.report.tables import table_rows, to_csv, to_markdown
from braintl.results import best_model
from braintl.storage import resolve
from braintl.uncertainty import BOOTSTRAP_RESAMPLES

REPORT_DIR = "report"


def write_report(run_url: str, resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, str]:
    """Render the report of the run at ``run_url``; returns file name → URL."""
    return write_report_files(run_url, *build_report(run_url, resamples))


def write_report_files(run_url: str, report: dict, images: dict[str, str]) -> dict[str, str]:
    """``report/`` under the run from a built report (see :func:`build_report`)."""
    rows = report["table"]
    files = {
        "index.html": render_html(report, images).encode(),
        "report.json": None,
        "table.csv": to_csv(rows).encode(),
        "table.md": to_markdown(rows, report["run"]["protocol"], report["warnings"]).encode(),
    }
    target = resolve(run_url).join(REPORT_DIR)
    urls = {}
    for name, content in files.items():
        loc = target.join(name)
        if content is None:
            loc.write_json(report)
        else:
            loc.write_bytes(content)
        urls[name] = loc.url
    return urls


def build_report(run_url: str, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[dict, dict]:
    """The report document (JSON) and its images (name → data URI, kept out of the JSON)."""
    run = load_run(run_url)
    if not run.results["models"]:
        raise ValueError(f"{run.loc.url}: the run trained no model, so there is nothing to report")
    tensors = load_tensors(run)
    preds = fold_predictions(run.results, tensors.labels, tensors.groups)
    best = best_model(run.results)
    synthetic = synthetic_data(run.tensors_url)
    protocol, image_size = run.params["protocol"], run.params["image_size"]
    models = []
    for model in run.results["models"]:
        config = model["config"] or {}
        comparison = seed_comparison(
            model["backbone"],
            config.get("weights"),
            protocol,
            synthetic,
            departures(config, image_size) if config else ["configuration not recorded"],
        )
        models.append(
            {
                "model": model["model"],
                "backbone": model["backbone"],
                "strategy": model["strategy"],
                "weights": config.get("weights"),
                "best": model["model"] == best["model"],
                "config": config,
                "folds": {"val": model["val"], "test": model["test"]},
                "runs": model["runs"],
                **model_statistics(preds[model["model"]], resamples, BOOTSTRAP_SEED),
                "seed": seed_row(model["backbone"], model["strategy"])
                if comparison["shown"]
                else None,
                "seed_comparison": comparison,
            }
        )
    cases = gradcam_examples(tensors, preds[best["model"]], best["config"], best["runs"])
    validation = external.load(run.loc)
    report = json_safe(
        {
            "warnings": run_warnings(
                [(m["backbone"], m["weights"]) for m in models],
                synthetic,
                smoke_test=run.params.get("profile") == SMOKE_TEST_PROFILE,
            ),
            "summary": _summary(run, models[0], synthetic),
            "estimate_note": ESTIMATE_NOTE.format(
                bootstrap=models[0]["bootstrap"]["text"], resamples=resamples, seed=BOOTSTRAP_SEED
            ),
            "models": models,
            "table": table_rows(models),
            "comparisons": {
                "delong": delong_against_best(preds, best["model"]),
                "method": DELONG_METHOD,
                "estimand": ensemble_estimand(len(best["runs"])),
            },
            "leakage_audit": leakage_audit(run, sibling_runs(run)),
            "external": validation,
            "sweep": run.sweep,
            "cross_validation": _cross_validation(run, best),
            "explanations": {
                "model": best["model"],
                "folds": [run["fold"] for run in best["runs"]],
                "model_urls": [run["model_url"] for run in best["runs"]],
                "threshold": preds[best["model"]].threshold,
                "cases": [{k: v for k, v in c.items() if k != "image"} for c in cases],
            },
            "data": _data(run),
            "run": _run(run),
            "champion": run.challenge,
            "seed": {
                "source": SEED_SOURCE,
                "protocol": SEED_PROTOCOL_NOTE,
                "table_1": [
                    {"backbone": b, "strategy": s, **row} for (b, s), row in TABLE_1.items()
                ],
            },
        }
    )
    images = _plots(models) | external.figures(validation)
    images |= {f"gradcam-{i}": case["image"] for i, case in enumerate(cases)}
    return report, images


def _summary(run: Run, best: dict, synthetic: bool) -> dict:
    """The plain-words summary: the best model's test figures (the published fold ensemble's)
    with their interval, then what, if anything, the seed's figures say beside them (see
    braintl.caveats)."""
    auc, by_image = best["test_bootstrap"]["auc"], best["test_bootstrap_images"]["auc"]
    protocol = run.params["protocol"]
    leak = "leak-free" if protocol == "groups" else "leaky, as the seed's"
    k = len(best["folds"]["test"]["auc"]["values"])
    estimand = ensemble_estimand(k)
    plan = _cross_validation(run, best)
    text = (
        f"Best model: {best['model']} (weights {best['weights']}), chosen by mean validation "
        f"AUC over {k} folds ({plan['note']}), protocol {protocol} ({leak}). On the held-out "
        f"test set ({best['n_test']} scans) its AUC ({estimand}) is {_fmt(auc['estimate'])} "
        f"(95% CI "
        f"{_fmt(auc['low'])}–{_fmt(auc['high'])}, {best['bootstrap']['text']}, "
        f"{auc['resamples']} resamples; an image bootstrap, which takes copies for independent "
        f"cases, gives {_fmt(by_image['low'])}–{_fmt(by_image['high'])}; the {k} fold models "
        f"alone: {_mean_sd(best['folds']['test']['auc'])}), accuracy "
        f"{_fmt(best['test_bootstrap']['accuracy']['estimate'])}, "
        f"sensitivity {_fmt(best['test_bootstrap']['recall']['estimate'])}, specificity "
        f"{_fmt(best['test_bootstrap']['specificity']['estimate'])}. "
    )
    comparison = best["seed_comparison"]
    seed = (best["seed"] or seed_best()) if comparison["shown"] else None
    if synthetic:
        text += (
            "The data are synthetic phantoms: these figures say nothing about brain MRI, and "
            "nothing is compared with the seed's real-data figures."
        )
    elif seed is None:
        text += f"The seed's figures: {comparison['label']}."
    else:
        seed_auc = seed["figures"]["auc"]
        which = "for this model" if best["seed"] else f"for its best model, {seed['name']},"
        text += (
            f"The seed reports AUC {seed_auc:.3f} {which} (protocol paper, one model on one "
            f"random split; {comparison['label']})"
        )
        if not comparison["comparable"]:
            text += (
                ": no difference is taken; the leakage audit, with a paper-protocol run of "
                "the same settings, measures what the protocol adds."
            )
        elif auc["estimate"] is None:
            text += "; our AUC is undefined (one class in the test set)."
        else:
            inside = auc["low"] <= seed_auc <= auc["high"]
            text += (
                f": ours is {auc['estimate'] - seed_auc:+.3f}, and the seed's figure lies "
                f"{'inside' if inside else 'outside'} our interval."
            )
    return {
        "best_model": best["model"],
        "auc": auc["estimate"],
        "auc_estimand": estimand,
        "auc_low": auc["low"],
        "auc_high": auc["high"],
        "auc_images_low": by_image["low"],
        "auc_images_high": by_image["high"],
        "bootstrap": best["bootstrap"]["text"],
        "protocol": protocol,
        "synthetic": synthetic,
        "seed_comparison": comparison,
        "seed_model": seed["name"] if seed else None,
        "seed_auc": seed["figures"]["auc"] if seed else None,
        "text": text,
    }


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _mean_sd(summary: dict) -> str:
    sd = "" if summary["sd"] is None else f" ± {summary['sd']:.3f}"
    return f"{_fmt(summary['mean'])}{sd}"


def _cross_validation(run: Run, best: dict) -> dict:
    """Which folds tuned and which were scored: results.json's ``cross_validation``; a run
    written before the tuning split was kept apart scored every fold it lists."""
    plan = run.results.get("cross_validation")
    if plan:
        return plan
    folds = [r["fold"] for r in best["runs"]]
    return {
        "tuning": None,
        "folds": run.params.get("folds"),
        "tuning_fold": None,
        "tuning_split": None,
        "scored_folds": folds,
        "note": f"cross-validation on folds {', '.join(map(str, folds))} (this run predates "
        "keeping the tuning fold out of cross-validation)",
    }


def _data(run: Run) -> dict:
    data = run.config["data"]
    meta = {k: v for k, v in data["meta"].items() if k != "files"}
    manifest = resolve(run.tensors_url).join("manifest.json")
    return {
        "fingerprint": data["fingerprint"],
        "tensors_url": run.tensors_url,
        "reused": data.get("reused"),
        "meta": meta,
        "augmentation": meta.get("config", {}).get("augment"),
        "manifest": _manifest_summary(manifest.read_json()) if manifest.exists() else None,
    }


def _manifest_summary(raw: dict) -> dict:
    """``Manifest.summary()`` of a manifest.json: counts, quarantine, duplicate groups."""
    manifest = Manifest(
        root=raw["root"],
        records=[Record(**r) for r in raw["records"]],
        skipped=[tuple(s) for s in raw["skipped"]],
        near_distance=raw["near_distance"],
        exact_pairs=[tuple(p) for p in raw["exact_pairs"]],
        near_pairs=[tuple(p) for p in raw["near_pairs"]],
        fingerprint=raw["fingerprint"],
        seconds=raw["seconds"],
    )
    return manifest.summary()


def _run(run: Run) -> dict:
    info = run.info
    return {
        "run_id": run.run_id,
        "url": run.loc.url,
        "protocol": run.params["protocol"],
        "started": info.get("started"),
        "finished": (run.completed or {}).get("finished"),
        "rendered": datetime.now(UTC).isoformat(),
        "stages": info.get("stages", {}),
        "versions": info.get("versions"),
        "hardware": info.get("hardware"),
        "params": run.params,
    }


def _plots(models: list[dict]) -> dict[str, str]:
    ensembles = [{"name": m["model"], **m["ensemble"]} for m in models]
    named = [{"name": m["model"], **m} for m in models]
    return {
        "roc": plots.roc_curves(ensembles),
        "calibration": plots.calibration(ensembles),
        "confusion": plots.confusion_matrices(named),
        "learning": plots.learning_curves(named),
    }
