"""The paper profile trains the seed's own settings: no sweep unless one is asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import TWO_MODELS, small_params
from temporary_prefect import run_retrain

from braintl.caveats import RANDOM_INIT_WARNING
from braintl.cli import build_parser
from braintl.commands.run import params_from_args
from braintl.replica import seed_config
from flows.params import RetrainParams

# paper asks for GPUs: none here; a cluster run stores on S3
ON_CLUSTER = {"ray_address": "http://head:8265", "out_url": "s3://bucket/runs"}
SEED = {"lr": 1e-3, "batch_size": 18, "epochs": 18, "head": "paper", "backbone_lr_factor": 1.0}
VGG_FT = {**SEED, "head": "paper_vgg_ft", "warmup_epochs": 18, "epochs": 18 + 98}


def _configs(params: RetrainParams) -> dict[str, dict]:
    configs = {}
    for weights, pairs in params.sweep_groups().items():
        configs |= params.fixed_configs(weights, pairs)
    return configs


def test_paper_profile_trains_every_model_with_the_seeds_settings():
    params = RetrainParams(profile="paper", **ON_CLUSTER)
    assert params.tuning == "seed"
    configs = _configs(params)
    assert set(configs) == {f"{b}/{s}" for b, s in params.pairs()} and len(configs) == 9
    for name, config in configs.items():
        expected = VGG_FT if name == "vgg16/finetune" else {**SEED, "warmup_epochs": 0}
        assert {k: config[k] for k in expected} == expected, name
        assert config["head_units"] is None and config["dropout"] is None  # the heads' own
        assert config["early_stopping_patience"] is None and config["weight_decay"] == 0
        scratch = name.startswith("scratch_cnn")
        assert config["weights"] == ("none" if scratch else "imagenet")
        assert config["strategy"] == name.split("/")[1]


def test_vgg16_fine_tuned_warms_its_head_for_the_basic_budget_then_adds_98():
    config = seed_config("vgg16", "finetune", {"weights": "none", "epochs": 2, "seed": 0})
    assert (config.warmup_epochs, config.epochs, config.head) == (2, 100, "paper_vgg_ft")
    assert seed_config("xception", "finetune", {"weights": "none"}).warmup_epochs == 0


@pytest.mark.parametrize(
    ("given", "tuning"),
    [
        ({}, "seed"),
        ({"sweep": {"num_samples": 4}}, "sweep"),
        ({"sweep": {"num_samples": 4}, "tuning": "seed"}, "seed"),
        ({"tuning": "sweep"}, "sweep"),
    ],
)
def test_sweep_settings_ask_for_a_sweep(given, tuning):
    params = RetrainParams(profile="paper", **ON_CLUSTER, **given)
    assert params.tuning == tuning
    again = RetrainParams(**params.model_dump())  # a round trip (Prefect's) keeps the choice
    assert again.tuning == tuning and again.sweep == params.sweep


def test_cli_paper_run_is_a_replica_unless_asked_to_sweep():
    def parsed(*extra: str) -> RetrainParams:
        args = build_parser().parse_args(["run", "--profile", "paper", *extra])
        return RetrainParams(**{**params_from_args(args), **ON_CLUSTER})

    assert parsed().tuning == "seed"
    assert parsed("--num-samples", "8").tuning == "sweep"
    assert parsed("--tuning", "sweep").tuning == "sweep"
    assert RetrainParams().tuning == "sweep"  # quick sweeps, as before


@pytest.mark.slow
def test_a_seed_run_trains_the_fixed_configurations_without_a_sweep(tmp_path, caplog):
    """The real flow with ``tuning="seed"``: no sweep, every fold trains the seed's settings,
    and the log warns, before training, that random-weight backbones are stand-ins."""

    from braintl.data.phantoms import write_phantom_dataset

    data = write_phantom_dataset(str(tmp_path / "data"), {"yes": 12, "no": 12}, size=48)
    params = small_params(
        data, tmp_path / "out", tuning="seed", epochs=1, folds=2, sweep={}, **TWO_MODELS
    )
    state = run_retrain(params, tmp_path / "prefect")
    assert state.is_completed(), state.message
    run = Path(state.result()["run_url"])
    assert json.loads((run / "sweep.json").read_text()) == {}
    results = json.loads((run / "results.json").read_text())
    base = params.base_train_config("none")
    for model in results["models"]:
        expected = seed_config(model["backbone"], model["strategy"], base).model_dump()
        trained = {k: v for k, v in model["config"].items() if k != "num_threads"}
        assert trained == {k: v for k, v in expected.items() if k != "num_threads"}
        assert model["config"]["lr"] == 1e-3  # batch size and epochs: the run's (quick)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(RANDOM_INIT_WARNING in w and "mobilenet_v2" in w for w in warnings)
    assert 'id="no-sweep"' in (run / "report" / "index.html").read_text()
