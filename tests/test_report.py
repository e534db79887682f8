"""The report of two small real runs (groups, then paper): every section, every model's row,
the page's figures equal to report.json's and results.json's, the leakage audit, the command."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape
from report_runs import ReportRuns, report_runs

from braintl.caveats import (
    LEAKY_REFERENCE,
    RANDOM_INIT_WARNING,
    SMOKE_TEST_WARNING,
    SYNTHETIC_WARNING,
)
from braintl.cli import main
from braintl.data.tensors import TensorSet
from braintl.metrics import evaluate, youden_threshold
from braintl.report.build import build_report
from braintl.report.render import PLOTS, SECTIONS
from braintl.report.tables import TABLE_METRICS

pytestmark = pytest.mark.slow
MODELS = {"scratch_cnn/full", "mobilenet_v2/frozen"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> ReportRuns:
    return report_runs(tmp_path_factory)


class _Page(HTMLParser):
    """Section ids, image ids/sources and every element carrying a figure (data-value)."""

    def __init__(self, html: str):
        super().__init__()
        self.sections: list[str] = []
        self.images: list[dict] = []
        self.values: list[dict] = []
        self.rows: list[dict] = []
        self.comparisons: list[dict] = []  # DeLong table cells, with their row's other model
        self._cell: dict = {}
        self._other = ""
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a["id"])
        elif tag == "img":
            self.images.append(a)
        elif tag == "tr" and "data-model" in a:
            self.rows.append(a)
        elif tag == "td" and "data-metric" in a and "data-model" in a:
            self._cell = a
        elif tag == "tr" and "data-other" in a:
            self._other = a["data-other"]
        elif tag == "td" and "data-key" in a:
            self.comparisons.append({"other": self._other, **a})
        elif "data-field" in a:
            self.values.append({**self._cell, **a})


def _files(runs: ReportRuns, protocol: str) -> tuple[dict, dict, str]:
    run = runs.run_dir(protocol)
    report = json.loads((run / "report" / "report.json").read_text())
    results = json.loads((run / "results.json").read_text())
    return report, results, (run / "report" / "index.html").read_text()


def test_the_flow_renders_every_section_and_links_it(runs):
    for protocol in ("groups", "paper"):
        record = runs.records[protocol]
        report_dir = runs.run_dir(protocol) / "report"
        assert set(record["report"]) == {"index.html", "report.json", "table.csv", "table.md"}
        assert all(Path(url).is_file() for url in record["report"].values())
        uri = (report_dir / "index.html").resolve().as_uri()
        assert runs.links[protocol] == f"[report]({uri})"  # the link artifact, as Prefect keeps it
        report, _, html = _files(runs, protocol)
        page = _Page(html)
        assert page.sections == list(SECTIONS)
        assert {row["data-model"] for row in page.rows} == MODELS
        assert [r["data-model"] for r in page.rows if r.get("class") == "best"] == [
            report["summary"]["best_model"]
        ]
        plots = {img["id"] for img in page.images if img.get("id", "").startswith("plot-")}
        assert plots == {f"plot-{k}" for k in PLOTS}
        gradcam = [img for img in page.images if img.get("class") == "gradcam"]
        assert len(gradcam) == len(report["explanations"]["cases"]) > 0
        assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)
        assert "http://" not in html and "https://" not in html
        csv_rows = (report_dir / "table.csv").read_text().splitlines()
        assert len(csv_rows) == 1 + len(MODELS)
        table_md = (report_dir / "table.md").read_text()
        assert all(model in table_md for model in MODELS)
    latest = json.loads((runs.out / "latest.json").read_text())
    assert latest["report"] == runs.records["paper"]["report"]


def _ensemble_scores(model: dict, labels: np.ndarray) -> dict:
    """The fold ensemble recomputed from the fold models' metrics.json: the test probabilities'
    mean, scored at Youden's threshold of the pooled out-of-fold validation predictions."""
    folds = [
        json.loads(Path(r["metrics_url"]).read_text())["evaluation"]["predictions"]
        for r in model["runs"]
    ]
    val_index = np.concatenate([f["val"]["index"] for f in folds])
    val_prob = np.concatenate([f["val"]["prob"] for f in folds])
    threshold = youden_threshold(labels[val_index], val_prob)
    prob = np.mean([f["test"]["prob"] for f in folds], axis=0)
    return evaluate(labels[folds[0]["test"]["index"]], prob, threshold).to_dict()


def test_page_figures_equal_report_json_and_results_json(runs):
    report, results, html = _files(runs, "paper")
    by_model = {m["model"]: m for m in results["models"]}
    config = json.loads((runs.run_dir("paper") / "config.json").read_text())
    labels = TensorSet.load(config["data"]["tensors_url"]).labels
    assert {m["model"] for m in report["models"]} == MODELS
    for model in report["models"]:
        ours = by_model[model["model"]]
        assert model["folds"] == {"val": ours["val"], "test": ours["test"]}
        assert model["weights"] == ours["config"]["weights"] == "none"
        unit = model["bootstrap"]
        assert unit["method"] == "group bootstrap" and unit["images"] == model["n_test"]
        assert unit["groups"] == model["n_groups"] <= model["n_test"]
        assert unit["text"] == f"group bootstrap, {unit['groups']} groups, {unit['images']} images"
        ensemble = _ensemble_scores(ours, labels)
        for metric, boot in model["test_bootstrap"].items():
            # The fold ensemble at its out-of-fold threshold (the published model's score).
            assert boot["estimate"] == pytest.approx(ensemble[metric])
            if boot["estimate"] is None:  # e.g. precision when nothing is called tumor
                assert (boot["resamples"], boot["skipped"]) == (0, 1000)
                continue
            assert boot["resamples"] > 900
            assert boot["resamples"] + boot["skipped"] == 1000
            assert boot["low"] <= boot["estimate"] <= boot["high"]
            images = model["test_bootstrap_images"][metric]
            assert images["estimate"] == boot["estimate"]  # same images, other resampling unit
    table = {row["model"]: row["cells"] for row in report["table"]}
    page = _Page(html)
    shown = page.values
    # Per cell: the group-bootstrap estimate, the image bootstrap's low and high, the figure on
    # one image per group with its low and high, the validation and test fold means, the seed.
    assert len(shown) == len(MODELS) * len(TABLE_METRICS) * 9
    for value in shown:
        expected = table[value["data-model"]][value["data-metric"]][value["data-field"]]
        assert json.loads(value["data-value"]) == expected
    best = report["models"][0]
    assert best["model"] == report["summary"]["best_model"] == results["models"][0]["model"]
    assert report["summary"]["auc"] == best["test_bootstrap"]["auc"]["estimate"]
    assert f"{report['summary']['auc']:.3f}" in report["summary"]["text"]
    assert best["bootstrap"]["text"] in report["summary"]["text"]
    assert best["bootstrap"]["text"] in report["estimate_note"]
    assert escape(report["estimate_note"]) in html
    delong = {r["other"]: r for r in report["comparisons"]["delong"]}
    assert len(page.comparisons) == len(delong) * 7
    for cell in page.comparisons:
        assert json.loads(cell["data-value"]) == delong[cell["other"]][cell["data-key"]]
    assert escape(report["summary"]["text"]) in html


def test_random_weights_and_phantoms_open_with_warnings_and_get_no_seed_figure(runs):
    report, _, html = _files(runs, "groups")
    smoke_test, random_init, synthetic = report["warnings"]  # the runs are profile quick's
    assert smoke_test == f"{SMOKE_TEST_WARNING}."
    assert random_init.startswith(RANDOM_INIT_WARNING) and "mobilenet_v2" in random_init
    assert synthetic.startswith(SYNTHETIC_WARNING)
    warnings_at = html.index('class="warning"')
    assert warnings_at < html.index('id="summary"')
    assert all(escape(w) in html for w in report["warnings"])
    table_md = (runs.run_dir("groups") / "report" / "table.md").read_text()
    assert table_md.startswith(f"**Warning: {smoke_test}**")
    for model in report["models"]:
        assert model["seed"] is None and not model["seed_comparison"]["shown"]
        assert "synthetic" in model["seed_comparison"]["label"]
    summary = report["summary"]
    assert summary["synthetic"] and summary["seed_auc"] is None
    assert "synthetic phantoms" in summary["text"] and "The seed reports" not in summary["text"]
    assert "seed 83.6" not in html  # the seed's 2D-CNN AUC, in %
    assert "Xception fine-tuned" in json.dumps(report["seed"]["table_1"])  # still cited, apart


def test_one_estimand_the_published_ensemble_is_named_wherever_a_test_figure_is(runs):
    """Summary, Table 1, DeLong, ROC and calibration score the fold ensemble at its out-of-fold
    threshold; only the spread and the leakage audit are the fold models' mean."""
    report, results, html = _files(runs, "paper")
    fold_mean = "mean of 2 fold models, each at its own threshold"
    ensemble = (
        "fold ensemble of 2 models (mean probability; the published model), at its out-of-fold "
        "validation threshold"
    )
    assert report["summary"]["auc_estimand"] == ensemble
    assert f"AUC ({ensemble})" in report["summary"]["text"]
    assert all(row["estimand"] == ensemble for row in report["table"])
    assert report["comparisons"]["estimand"] == ensemble
    assert all(m["ensemble"]["estimand"] == ensemble for m in report["models"])
    assert all(row["estimand"] == fold_mean for row in report["leakage_audit"]["rows"])
    assert f"<b>{ensemble}</b>" in html and fold_mean not in html.split('id="leakage')[0]
    for model in report["models"]:  # the table's AUC is the ensemble's, DeLong's and ROC's
        assert model["test_bootstrap"]["auc"]["estimate"] == pytest.approx(model["ensemble"]["auc"])
    best = report["models"][0]
    spread = results["models"][0]["test"]["auc"]
    assert (
        f"the 2 fold models alone: {spread['mean']:.3f} ± {spread['sd']:.3f}"
        in (report["summary"]["text"])
    )
    assert report["summary"]["auc"] == best["test_bootstrap"]["auc"]["estimate"]


def test_comparisons_sweep_and_data_sections(runs):
    report, results, html = _files(runs, "paper")
    (delong,) = report["comparisons"]["delong"]
    assert delong["best"] == results["models"][0]["model"]
    assert delong["other"] == results["models"][1]["model"]
    assert 0 <= delong["p"] <= 1 and 0 <= delong["p_images"] <= 1
    assert delong["p_holm"] == delong["p"]  # one comparison: Holm changes nothing
    assert delong["groups"] == report["models"][0]["n_groups"]
    for model in report["models"]:
        assert sum(map(sum, model["confusion_matrix"])) == model["n_test"]  # the ensemble's
    sweep = json.loads((runs.run_dir("paper") / "sweep.json").read_text())
    trials = [t for s in sweep.values() for t in s["trials"]]
    assert html.count("<tr>") >= len(trials) and f"{len(trials)} trials" in html
    manifest = report["data"]["manifest"]
    assert manifest["per_label"] == {"no_tumor": 16, "tumor": 16}
    assert report["data"]["fingerprint"] == runs.records["paper"]["fingerprint"]
    assert set(report["run"]["stages"]) >= {"prepare", "cross-validation", "results"}
    for case in report["explanations"]["cases"]:
        called = "Tumor" if case["prob"] >= report["explanations"]["threshold"] else "No Tumor"
        assert case["predicted"] == called
        assert case["correct"] == (case["label"] == called)


def test_leakage_audit_compares_the_protocols(runs, capsys):
    groups_report, groups_results, _ = _files(runs, "groups")
    assert groups_report["leakage_audit"]["rows"] == []  # the paper run did not exist yet
    paper_report, paper_results, html = _files(runs, "paper")
    audit = paper_report["leakage_audit"]
    assert audit["runs"]["groups"]["run_id"] == runs.records["groups"]["run_id"]
    assert {row["model"] for row in audit["rows"]} == MODELS
    groups_by = {m["model"]: m["test"] for m in groups_results["models"]}
    paper_by = {m["model"]: m["test"] for m in paper_results["models"]}
    for row in audit["rows"]:
        for metric, inflation in row["inflation"].items():
            g, p = groups_by[row["model"]][metric]["mean"], paper_by[row["model"]][metric]["mean"]
            assert inflation == pytest.approx(p - g)
    assert 'id="leakage-table"' in html
    # The paper models again, on the original scans of their test set only.
    config = json.loads((runs.run_dir("paper") / "config.json").read_text())
    tensors = TensorSet.load(config["data"]["tensors_url"])
    sets = audit["test_sets"]
    assert sets["groups"]["originals"] == sets["groups"]["images"]  # copies only in training
    assert sets["paper"]["originals"] < sets["paper"]["images"]  # augmented, then split
    for model in paper_results["models"]:
        row = next(r for r in audit["rows"] if r["model"] == model["model"])
        scores = []
        for fold in model["runs"]:
            test = json.loads(Path(fold["metrics_url"]).read_text())["evaluation"]["predictions"]
            index = np.asarray(test["test"]["index"])
            keep = ~tensors.augmented[index]
            prob = np.asarray(test["test"]["prob"])[keep]
            scores.append(evaluate(tensors.labels[index][keep], prob, fold["threshold"]))
        assert len(keep) > keep.sum() == sets["paper"]["originals"]
        for metric in ("accuracy", "auc"):
            expected = np.mean([getattr(s, metric) for s in scores])
            assert row["paper_originals"][metric] == pytest.approx(expected)
            g = groups_by[model["model"]][metric]["mean"]
            assert row["inflation_originals"][metric] == pytest.approx(expected - g)
    assert "original scans of their test set" in html

    # Re-rendered now, the groups run finds its paper sibling too.
    assert main(["report", str(runs.run_dir("groups"))]) == 0
    index = runs.run_dir("groups") / "report" / "index.html"
    assert capsys.readouterr().out.strip() == f"report: {index}"
    rerendered = json.loads((index.parent / "report.json").read_text())
    assert {row["model"] for row in rerendered["leakage_audit"]["rows"]} == MODELS


def test_report_command_names_what_is_missing(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "config.json not found" in err and "OUT_URL/runs/<run_id>" in err


def test_report_command_on_an_output_root_renders_its_latest_run(runs, capsys):
    assert main(["report", str(runs.out), "--json"]) == 0
    urls = json.loads(capsys.readouterr().out)
    assert urls == runs.records["paper"]["report"]


def _as_imagenet_on_real_scans(run: Path, root: Path) -> Path:
    """A copy of ``run`` relabelled as ImageNet-started on real scans (ImageNet weights cannot
    be fetched here): weights in results.json and file names in the manifest rewritten."""
    config = json.loads((run / "config.json").read_text())
    cache = root / "cache" / Path(config["data"]["tensors_url"]).name
    shutil.copytree(config["data"]["tensors_url"], cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    for record in manifest["records"]:
        record["relpath"] = record["relpath"].replace("phantom_", "scan_")
    (cache / "manifest.json").write_text(json.dumps(manifest))
    copy = root / "runs" / run.name
    shutil.copytree(run, copy)
    config["data"]["tensors_url"] = str(cache)
    (copy / "config.json").write_text(json.dumps(config))
    # The copy's records point at its own folds: braintl follows no stored URL out of the root.
    results = json.loads((copy / "results.json").read_text().replace(str(run), str(copy)))
    for model in results["models"]:
        if model["backbone"] != "scratch_cnn":
            model["config"]["weights"] = "imagenet"
    (copy / "results.json").write_text(json.dumps(results))
    return copy


@pytest.mark.parametrize("protocol", ["groups", "paper"])
def test_imagenet_runs_on_real_scans_show_the_seed_labelled_by_protocol(runs, tmp_path, protocol):
    report, _ = build_report(str(_as_imagenet_on_real_scans(runs.run_dir(protocol), tmp_path)))
    assert report["warnings"] == [f"{SMOKE_TEST_WARNING}."]  # run with profile quick
    seeds = {m["model"]: m for m in report["models"]}
    assert seeds["mobilenet_v2/frozen"]["seed"]["name"] == "MobileNetV2"
    assert seeds["scratch_cnn/full"]["seed"]["name"] == "2D-CNN"
    summary = report["summary"]
    assert not summary["synthetic"] and "The seed reports AUC" in summary["text"]
    assert "no difference is taken" in summary["text"]  # neither is like-for-like
    for model in report["models"]:
        comparison = model["seed_comparison"]
        assert comparison["shown"] and not comparison["comparable"]
        if protocol == "groups":
            assert comparison["label"] == LEAKY_REFERENCE
        else:  # the quick settings of these small runs are not the seed's
            assert "epochs 2 (seed 18)" in comparison["label"]
            assert "image size 32 (seed 224)" in comparison["label"]
