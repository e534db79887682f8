"""The published model of a run: its fold ensemble's files and weights, its threshold, a model card
filled from the run whose headline is the report's, and older single-model packages."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from small_run import small_run

from braintl.data.tensors import TensorSet
from braintl.errors import UserError
from braintl.markdown import markdown_escape
from braintl.metrics import youden_threshold
from braintl.publish import CARD_FILE, INTENDED_USE, SINGLE_FOLD, load_model
from braintl.results import best_model
from braintl.storage import resolve
from braintl.training import predict_proba

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    return small_run(tmp_path_factory)


def test_run_publishes_the_fold_ensemble_of_its_best_model_and_latest_names_it(retrained):
    """Every scored fold model of the best configuration is a member, weights as trained; the
    threshold is Youden's on the members' out-of-fold validation predictions."""
    run = resolve(retrained.record["run_url"])
    assert retrained.record["model"] == run.join("model").url
    assert resolve(retrained.out).join("latest.json").read_json()["model"] == run.join("model").url
    best = best_model(run.join("results.json").read_json())
    published = load_model(retrained.record["model"])
    info = published.info
    assert (info["backbone"], info["strategy"]) == ("scratch_cnn", "full")
    assert [m["fold"] for m in info["members"]] == [r["fold"] for r in best["runs"]] == [1, 2]
    assert len(published.members) == 2
    for member, fold in zip(published.members, best["runs"], strict=True):
        trained = torch.load(fold["model_url"], weights_only=True)
        loaded = member.state_dict()
        assert trained.keys() == loaded.keys()
        assert all(torch.equal(trained[k], loaded[k]) for k in trained)
    tensors = TensorSet.load(info["data"]["tensors_url"])
    index, prob = [], []
    for fold in best["runs"]:
        val = resolve(fold["metrics_url"]).read_json()["evaluation"]["predictions"]["val"]
        index += val["index"]
        prob += val["prob"]
    assert info["threshold"] == youden_threshold(tensors.labels[index], prob)
    data = run.join("config.json").read_json()["data"]
    assert info["fingerprint"] == data["fingerprint"] == retrained.record["fingerprint"]
    assert info["preprocess"] == data["meta"]["config"]["preprocess"]
    assert info["label_map"] == {"yes": "tumor", "no": "no_tumor"}


def test_card_and_report_give_one_headline_figure(retrained):
    """The card's test figures are the report's for the best model: the ensemble's, with the
    same group-bootstrap intervals, and both name the same estimand."""
    info = load_model(retrained.record["model"]).info
    report = resolve(retrained.record["run_url"]).join("report", "report.json").read_json()
    best = next(m for m in report["models"] if m["best"])
    assert info["metrics"]["test"] == best["test_bootstrap"]
    assert info["estimand"] == report["summary"]["auc_estimand"] == report["table"][0]["estimand"]
    assert info["estimand"] == report["comparisons"]["estimand"]
    assert info["threshold"] == best["ensemble"]["threshold"]
    assert report["summary"]["auc"] == info["metrics"]["test"]["auc"]["estimate"]


def test_model_card_has_every_field_filled_from_the_run(retrained):
    info = load_model(retrained.record["model"]).info
    card = resolve(retrained.record["model"]).join(CARD_FILE).read_bytes().decode()
    for expected in (
        f"Intended use: **{INTENDED_USE}**",
        f"from run {info['run_id']}",
        "2 fold models (folds 1, 2), their mean probability",
        "Backbone: `scratch_cnn`, strategy `full`, starting weights `none`",
        f"Decision threshold: {info['threshold']:.4f}",
        "out-of-fold validation predictions (16 images",
        f"fingerprint `{info['fingerprint']}`",
        f"Source: {markdown_escape(retrained.data)}",
        "32 usable scans, 0 augmented copies; held-out test part: 8 scans (4 tumor, 4 no tumor)",
        "Protocol `groups`",
        "source groups in more than one part: 0",
        "resized to 32 px",
        "fold ensemble of 2 models",
        "## Limitations",
    ):
        assert expected in card
    assert SINGLE_FOLD not in card
    groups = info["metrics"]["test_groups"]
    assert f"(8 images in {groups} source groups), with 95 % group-bootstrap intervals (" in card
    assert re.search(
        r"\| auc \| \d+\.\d % \[\d+\.\d %, \d+\.\d %\] \| \d+\.\d % \| \d+\.\d % ± \d+\.\d \|", card
    )
    assert not re.search(r"\bNone\b|\bnull\b|\bnan\b|TODO|\{|\}", card)


def test_format_1_packages_load_as_an_ensemble_of_one(retrained, tmp_path):
    """A package published before ensembles (one model at its root) still scores: predict and
    the champion challenge read it as one member at its own threshold."""
    package = resolve(retrained.record["model"])
    member = load_model(package.url).info["members"][0]
    old = tmp_path / "old"
    shutil.copytree(package.path, old, ignore=shutil.ignore_patterns("fold*"))
    for part in ("backbone", "head"):
        shutil.copy(package.join(member["folder"], f"{part}.safetensors").path, old)
    info = json.loads((old / "model.json").read_text())
    info = {k: v for k, v in info.items() if k != "members"}
    info |= {"format": "braintl-model/1", "fold": member["fold"], "threshold": 0.25}
    (old / "model.json").write_text(json.dumps(info))
    loaded = load_model(str(old))
    assert len(loaded.members) == 1 and loaded.threshold == 0.25
    images = TensorSet.load(info["data"]["tensors_url"]).images[:4]
    expected = load_model(package.url).members[0]
    np.testing.assert_array_equal(loaded.probabilities(images), predict_proba(expected, images))


def test_loading_an_incomplete_package_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="no complete published model here"):
        load_model(str(tmp_path))
