"""Bad parameters from the Prefect form or the CLI are refused before any work, naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from braintl.cli import main
from braintl.limits import gpu_request_problem, local_gpus
from flows.params import RetrainParams

ON_CLUSTER = {"ray_address": "http://h:8265", "out_url": "s3://b/runs"}


def _refused(**values) -> str:
    """The one error of RetrainParams(**values), as ``field: message``."""
    with pytest.raises(ValidationError) as info:
        RetrainParams(**values)
    errors = info.value.errors()
    assert len(errors) == 1
    return f"{'.'.join(map(str, errors[0]['loc']))}: {errors[0]['msg']}"


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"epochs": -1}, "epochs: Input should be greater than or equal to 1"),
        ({"backbones": ["resnet18"]}, "backbones: unknown 'resnet18'; choose from mobilenet_v2"),
        ({"backbones": []}, "backbones: none given; choose from"),
        ({"strategies": ["frozen", "sideways"]}, "strategies: unknown 'sideways'; choose from"),
        ({"sweep": {"gpus_per_trial": 1.5}, **ON_CLUSTER}, "gpus_per_trial=1.5"),
        ({"gpus_per_fold": 2.5, **ON_CLUSTER}, "gpus_per_fold=2.5"),
        ({"ray_address": "ray://h:10001"}, "ray_address: ray_address='ray://h:10001' is a Ray"),
        ({"ray_address": "h:6379"}, "out_url='braintl-runs' is a local path, but ray_address"),
        (
            {**ON_CLUSTER, "data_url": "/scans"},
            "data_url='/scans' is a local path, but ray_address='http://h:8265' runs the work",
        ),
        (
            {"data_url": "/scans", "out_url": "file:///scans/./runs"},
            "out_url: out_url=file:///scans/./runs lies inside data_url=/scans",
        ),
        ({"data_url": "s3://b/scans", "out_url": "s3a://b/scans/"}, "out_url: out_url=s3a"),
        ({"data_url": "s3://AKIA1:s3cr3t@b/scans"}, "data_url: data_url=s3://***@b/scans embeds"),
        ({"out_url": "s3://AKIA1:s3cr3t@b/runs"}, "out_url: out_url=s3://***@b/runs embeds"),
    ],
)
def test_form_refuses_bad_values_naming_the_field(values, expected):
    message = _refused(**values)
    assert expected in message
    assert "s3cr3t" not in message


def test_outputs_beside_or_above_the_data_are_fine(tmp_path):
    data = tmp_path / "scans"
    assert RetrainParams(data_url=str(data), out_url=str(tmp_path / "scans-runs")).out_url
    assert RetrainParams(data_url=str(data / "mri"), out_url=str(data)).out_url
    assert RetrainParams(data_url="s3://b/scans", out_url="s3://other/scans").out_url


def test_a_link_into_the_data_counts_as_inside(tmp_path):
    data = tmp_path / "scans"
    data.mkdir()
    (tmp_path / "alias").symlink_to(data)
    assert "lies inside" in _refused(data_url=str(data), out_url=str(tmp_path / "alias" / "o"))


@pytest.mark.parametrize(
    "gpus, per_node, fits",
    [
        (0.25, 1, True),
        (1, 1, True),
        (2, 1, False),  # a task takes its GPUs from one node
        (0.25, 0, False),
        (1.5, 8, False),  # Ray takes whole GPUs above one
        (4, None, True),  # a cluster: only the form is checked
        (1.5, None, False),
    ],
)
def test_gpu_request_rule(gpus, per_node, fits):
    assert (gpu_request_problem("gpus_per_fold", gpus, per_node) is None) == fits


def test_gpu_requests_checked_against_this_machine_with_local_ray():
    """Passes on a CPU machine and on a GPU machine alike: the limit is what is visible here."""
    here = local_gpus()
    too_many = here + 1
    message = _refused(sweep={"gpus_per_trial": too_many})
    assert f"sweep.gpus_per_trial={too_many}" in message and f"has {here} GPU" in message
    assert "gpus_per_fold" in _refused(gpus_per_fold=too_many)
    if here:
        params = RetrainParams(sweep={"gpus_per_trial": 0.25}, gpus_per_fold=1)
        assert params.sweep.gpus_per_trial == 0.25
    else:
        # paper asks ¼ GPU per fold, and per trial once it sweeps
        assert "sweep" not in _refused(profile="paper") and "gpus_per_fold=0.25" in _refused(
            profile="paper"
        )
        both = _refused(profile="paper", sweep={"num_samples": 2})
        assert "sweep.gpus_per_trial=0.25" in both and "gpus_per_fold=0.25" in both
    cluster = RetrainParams(profile="paper", **ON_CLUSTER, gpus_per_fold=2)
    assert cluster.gpus_per_fold == 2


@pytest.mark.parametrize(
    "args, expected",
    [
        (["run", "--epochs", "-1"], "epochs: Input should be greater than or equal to 1"),
        (["run", "--backbones", "scratch_cnn,resnet18"], "backbones: unknown 'resnet18'"),
        (["run", "--strategies", "frozen,upside_down"], "strategies: unknown 'upside_down'"),
        (["run", "--data", "{data}", "--out", "{data}/runs"], "out_url: out_url={data}/runs lies"),
        (["run", "--data", "s3://AKIA1:s3cr3t@b/scans"], "data_url=s3://***@b/scans embeds"),
        (["train", "--data", "{data}", "--out", "{data}/../scans/m"], "--out={data}/../scans/m"),
        (["train", "--data", "{data}", "--cache", "{data}"], "--cache={data} lies inside --data"),
        (["train", "--out", "s3://AKIA1:s3cr3t@b/m"], "--out=s3://***@b/m embeds credentials"),
        (["data", "inspect", "s3://AKIA1:s3cr3t@b/scans"], "DATA_URL=s3://***@b/scans embeds"),
    ],
)
def test_cli_refuses_before_any_work(tmp_path, capsys, args, expected):
    data = tmp_path / "scans"
    data.mkdir()
    args = [a.format(data=data) for a in args]
    if args[0] != "data" and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    before = sorted(tmp_path.rglob("*"))
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("braintl: error: ") and expected.format(data=data) in err[0]
    assert "s3cr3t" not in err[0]
    assert sorted(tmp_path.rglob("*")) == before  # nothing written: no phantoms, no cache
