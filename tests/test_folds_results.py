"""One cross-validation fold (in-process and as a Ray task), aggregation over folds, the
results files and the ``latest`` pointer."""

from __future__ import annotations

import csv
import io
import math
import statistics

import pytest
import ray
import torch

from braintl.folds import train_fold, train_fold_on_ray
from braintl.results import (
    METRICS,
    aggregate,
    best_model,
    complete_run,
    publish_latest,
    read_latest,
    unfinished_run,
    write_results,
)
from braintl.storage import resolve

CONFIG = {"backbone": "scratch_cnn", "strategy": "full", "epochs": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _check_record(record: dict, fold: int) -> None:
    assert (record["backbone"], record["strategy"], record["fold"]) == ("scratch_cnn", "full", fold)
    assert len(record["history"]) == CONFIG["epochs"]
    assert 1 <= record["best_epoch"] <= CONFIG["epochs"]
    for part in ("val", "test"):
        assert set(METRICS) <= set(record[part])
        assert 0 <= record[part]["accuracy"] <= 1


def test_train_fold_writes_model_and_metrics(tensors_url, tmp_path):
    out = str(tmp_path / "fold-1")
    record = train_fold(tensors_url, CONFIG, 1, out)
    _check_record(record, 1)
    metrics = resolve(record["metrics_url"]).read_json()
    assert metrics["fold"] == 1
    assert metrics["evaluation"]["val"]["at_youden"] == record["val"]
    assert len(metrics["evaluation"]["predictions"]["test"]["prob"]) == metrics["sizes"]["test"]
    state = torch.load(io.BytesIO(resolve(record["model_url"]).read_bytes()), weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert not resolve(out).join("checkpoint.pt").exists()  # removed once results are written


def test_train_fold_on_ray(local_ray, tensors_url, tmp_path):
    record = train_fold_on_ray(tensors_url, CONFIG, 0, str(tmp_path / "fold-0"), num_cpus=1)
    _check_record(record, 0)
    assert resolve(record["metrics_url"]).exists()
    assert record["config"]["num_threads"] == 1  # as many torch threads as Ray CPUs held


def _record(backbone: str, fold: int, val: dict, test: dict) -> dict:
    base = dict.fromkeys(METRICS, 0.5)
    return {
        "backbone": backbone,
        "strategy": "frozen",
        "fold": fold,
        "val": base | val,
        "test": base | test,
        "model_url": f"runs/r/folds/{backbone}-frozen/fold-{fold}/model.pt",
    }


def test_aggregate_mean_and_sd_over_folds():
    records = [
        _record("vgg16", 1, {"accuracy": 0.9, "auc": 0.7}, {"auc": 0.6}),
        _record("vgg16", 0, {"accuracy": 0.8, "auc": 0.8}, {"auc": 0.8}),
        _record("vgg16", 2, {"accuracy": 0.7, "auc": None}, {"auc": 0.7}),
        _record("resnet50", 0, {"auc": 0.95}, {"auc": 0.9}),
    ]
    results = aggregate(records)
    first, second = results["models"]
    assert first["model"] == "resnet50/frozen"  # ranked by mean validation AUC
    assert first["val"]["auc"] == {"mean": 0.95, "sd": None, "n": 1, "values": [0.95]}
    assert second["folds"] == [0, 1, 2]
    accuracy = second["val"]["accuracy"]
    assert accuracy["mean"] == pytest.approx(0.8)
    assert accuracy["sd"] == pytest.approx(statistics.stdev([0.8, 0.9, 0.7]))
    assert second["val"]["auc"]["values"] == [0.8, 0.7, None]  # undefined AUC is skipped
    assert second["val"]["auc"]["mean"] == pytest.approx(0.75) and second["val"]["auc"]["n"] == 2
    assert second["test"]["auc"]["mean"] == pytest.approx(0.7)
    assert second["test"]["auc"]["sd"] == pytest.approx(0.1)


def test_write_results_files(tmp_path):
    records = [
        _record("vgg16", 0, {"accuracy": 0.8}, {"f1": 0.6}),
        _record("vgg16", 1, {"accuracy": 0.9}, {"f1": math.nan}),
    ]
    results = aggregate(records)
    urls = write_results(str(tmp_path / "run"), results)
    assert set(urls) == {"results.json", "table.csv", "table.md"}
    assert resolve(urls["results.json"]).read_json() == results
    rows = list(csv.DictReader(io.StringIO(resolve(urls["table.csv"]).read_bytes().decode())))
    assert rows[0]["model"] == "vgg16/frozen" and rows[0]["folds"] == "2"
    assert float(rows[0]["val_accuracy_mean"]) == pytest.approx(0.85)
    assert float(rows[0]["val_accuracy_sd"]) == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert rows[0]["test_f1_sd"] == ""  # one defined value: no sd
    markdown = resolve(urls["table.md"]).read_bytes().decode()
    assert "| vgg16/frozen | 2 | 85.0 ± 7.1 |" in markdown


def test_best_model_is_the_best_fold_of_the_best_pair():
    results = aggregate(
        [
            _record("vgg16", 0, {"auc": 0.8}, {}),
            _record("vgg16", 1, {"auc": 0.9}, {}),
            _record("vgg16", 2, {"auc": 0.9}, {}),
            _record("resnet50", 0, {"auc": 0.95}, {}),
            _record("resnet50", 1, {"auc": 0.5}, {}),
        ]
    )
    best = best_model(results)
    assert best["model"] == "vgg16/frozen"  # mean 0.867 beats resnet50's 0.725
    assert best["fold"]["fold"] == 1  # highest validation AUC; ties go to the lower fold
    assert best["fold"]["model_url"].endswith("vgg16-frozen/fold-1/model.pt")


def test_unfinished_run_is_found_until_it_completes(tmp_path):
    out = tmp_path / "out"
    runs = resolve(str(out)).join("runs")
    assert unfinished_run(str(out), "key-a") is None
    runs.join("20260101T000000Z-aaaaaa", "config.json").write_json({"run_key": "key-a"})
    runs.join("20260102T000000Z-bbbbbb", "config.json").write_json({"run_key": "key-b"})
    assert unfinished_run(str(out), "key-a") == "20260101T000000Z-aaaaaa"
    assert unfinished_run(str(out), "key-c") is None
    run = runs.join("20260101T000000Z-aaaaaa").url
    write_results(run, aggregate([_record("vgg16", 0, {}, {})]))
    assert unfinished_run(str(out), "key-a") == "20260101T000000Z-aaaaaa"  # report etc. to come
    complete_run(run, {"run_id": "20260101T000000Z-aaaaaa"})
    assert unfinished_run(str(out), "key-a") is None  # completed: a rerun starts a new run


def test_publish_and_read_latest(tmp_path):
    out = str(tmp_path / "out")
    assert read_latest(out) is None
    publish_latest(out, {"run_id": "r1", "results": f"{out}/runs/r1/results.json"})
    publish_latest(out, {"run_id": "r2", "auc": math.nan})
    assert read_latest(out) == {"run_id": "r2", "auc": None}


def test_latest_on_s3(s3_bucket):
    publish_latest(f"{s3_bucket}/out", {"run_id": "r1"})
    assert read_latest(f"{s3_bucket}/out") == {"run_id": "r1"}
    assert read_latest(f"{s3_bucket}/other") is None
