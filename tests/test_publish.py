"""The published model of a run: its files, its weights, and a model card filled from the run."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from small_run import small_run

from braintl.errors import UserError
from braintl.publish import CARD_FILE, INTENDED_USE, load_model, publish_model
from braintl.results import best_model
from braintl.storage import resolve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    return small_run(tmp_path_factory)


def test_run_publishes_its_best_fold_model_and_latest_names_it(retrained):
    run = resolve(retrained.record["run_url"])
    assert retrained.record["model"] == run.join("model").url
    assert resolve(retrained.out).join("latest.json").read_json()["model"] == run.join("model").url
    best = best_model(run.join("results.json").read_json())
    published = load_model(retrained.record["model"])
    info = published.info
    assert (info["backbone"], info["strategy"], info["fold"]) == (
        "scratch_cnn",
        "full",
        best["fold"]["fold"],
    )
    assert info["threshold"] == best["fold"]["threshold"]
    data = run.join("config.json").read_json()["data"]
    assert info["fingerprint"] == data["fingerprint"] == retrained.record["fingerprint"]
    assert info["preprocess"] == data["meta"]["config"]["preprocess"]
    assert info["label_map"] == {"yes": "tumor", "no": "no_tumor"}
    trained = torch.load(best["fold"]["model_url"], weights_only=True)
    loaded = published.model.state_dict()
    assert trained.keys() == loaded.keys()
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)


def test_model_card_has_every_field_filled_from_the_run(retrained):
    info = load_model(retrained.record["model"]).info
    card = resolve(retrained.record["model"]).join(CARD_FILE).read_bytes().decode()
    for expected in (
        f"Intended use: **{INTENDED_USE}**",
        f"from run {info['run_id']}",
        "Backbone: `scratch_cnn`, strategy `full`, starting weights `none`",
        f"Decision threshold: {info['threshold']:.4f}",
        f"fingerprint `{info['fingerprint']}`",
        f"Source: `{retrained.data}`",
        "32 usable scans, 0 augmented copies; held-out test part: 8 scans (4 tumor, 4 no tumor)",
        "Protocol `groups`",
        "source groups in more than one part: 0",
        "resized to 32 px",
        "## Limitations",
    ):
        assert expected in card
    if resolve(retrained.record["run_url"]).join("report", "report.json").exists():
        assert re.search(r"- auc: \d+\.\d % \[\d+\.\d %, \d+\.\d %\] \(\d+ resamples\)", card)
    else:
        assert "Confidence intervals: missing" in card
    assert re.search(r"\| auc \| \d+\.\d % \| \d+\.\d % \| \d+\.\d % ± \d+\.\d \|", card)
    assert not re.search(r"\bNone\b|\bnull\b|\bnan\b|TODO|\{|\}", card)


def test_card_takes_the_intervals_from_the_run_report(retrained, tmp_path):
    """Without report/report.json the card says the intervals are missing; with one, it
    shows them."""
    copy = tmp_path / "run"
    shutil.copytree(
        retrained.record["run_url"], copy, ignore=shutil.ignore_patterns("model", "report")
    )
    card = resolve(publish_model(str(copy))["card"]).read_bytes().decode()
    assert "Confidence intervals: missing" in card and "resamples" not in card
    bootstrap = {"auc": {"estimate": 0.8125, "low": 0.5, "high": 1.0, "resamples": 2000}}
    report = {
        "summary": {
            "best_model": "scratch_cnn/full",
            "auc": 0.8125,
            "auc_low": 0.5,
            "auc_high": 1.0,
            "text": "scratch_cnn/full: test AUC 0.81 [0.50, 1.00]",
        },
        "models": [{"model": "scratch_cnn/full", "test_bootstrap": bootstrap}],
    }
    resolve(str(copy)).join("report", "report.json").write_json(report)
    urls = publish_model(str(copy))
    card = resolve(urls["card"]).read_bytes().decode()
    assert "- auc: 81.2 % [50.0 %, 100.0 %] (2000 resamples)" in card
    assert "test AUC 0.81 [0.50, 1.00]" in card
    assert "intervals: missing" not in card
    assert load_model(urls["model"]).info["metrics"]["intervals"]["test_bootstrap"] == bootstrap


def test_loading_an_incomplete_package_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="no complete published model here"):
        load_model(str(tmp_path))
