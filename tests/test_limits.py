"""The max_images / memory budget guard: a data set too large fails at listing, with its numbers."""

from __future__ import annotations

import math

import pytest

from braintl.cli import main
from braintl.data import manifest as manifest_module
from braintl.data.prepare import DataConfig, prepare
from braintl.errors import UserError
from braintl.limits import GB, PREPARE_COPIES, check_data_size, machine_memory


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    """Counts the files decoded (the real decoder still runs)."""
    calls: list[int] = []
    real = manifest_module.decode

    def counting(data, limits=None):
        calls.append(len(data))
        return real(data, limits)

    monkeypatch.setattr(manifest_module, "decode", counting)
    return calls


def test_over_the_memory_budget_fails_before_decoding(phantom_dir, tmp_path, decodes):
    config = DataConfig(memory_budget_gb=0.001, augment={"enabled": False})
    with pytest.raises(UserError) as info:
        prepare(str(phantom_dir), str(tmp_path / "out"), config)
    message = str(info.value)
    tensor_gb = 48 * 3 * 224 * 224 / GB
    assert "48 images at 224×224×3" in message
    assert f"{tensor_gb:.2f} GB of tensors" in message
    assert f"{tensor_gb * PREPARE_COPIES:.2f} GB while preparing" in message
    assert "memory budget of 0.00 GB (memory_budget_gb)" in message
    assert "--memory-budget-gb 1" in message and "image_size" in message
    assert decodes == []
    assert not (tmp_path / "out").exists()


def test_augmentation_counts_against_the_budget(phantom_dir, tmp_path, decodes):
    config = DataConfig(memory_budget_gb=0.01, preprocess={"image_size": 64})
    ratio = config.augment.target_ratio
    with pytest.raises(UserError, match=rf"48 images \(up to {math.ceil(48 * ratio)} with aug"):
        prepare(str(phantom_dir), str(tmp_path / "out"), config)
    assert decodes == []
    # Without augmentation the same budget holds the 48 originals at 64 px (1.8 MB).
    off = DataConfig(**config.model_dump(exclude={"augment"}), augment={"enabled": False})
    assert prepare(str(phantom_dir), str(tmp_path / "out"), off).meta["n"] == 48
    assert len(decodes) == 48


def test_estimate_bounds_what_augmentation_makes(phantom_dir, tmp_path):
    """The estimate taken before decoding is an upper bound of the tensors actually built."""
    config = DataConfig(preprocess={"image_size": 32}, folds=3)
    built = prepare(str(phantom_dir), str(tmp_path / "out"), config).meta["n"]
    assert built > 48  # augmented
    assert built <= math.ceil(48 * config.augment.target_ratio)


def test_max_images(phantom_dir, tmp_path, decodes):
    with pytest.raises(UserError) as info:
        prepare(str(phantom_dir), str(tmp_path / "out"), DataConfig(max_images=10))
    assert "more than max_images=10 files" in str(info.value)
    assert "--max-images" in str(info.value)
    assert decodes == []


def test_default_budget_is_half_this_machine():
    memory = machine_memory()
    assert 0 < memory <= 1 << 50
    # The real set in the paper profile (253 scans, 224 px, augmented ×8.2) needs < 1 GB.
    check_data_size(253, 224, 2062 / 251, None, "real set")
    # A nightly bucket grown to 100 000 scans would need about 370 GB: refused at once.
    with pytest.raises(UserError, match=rf"half of this machine's {memory / GB:.1f} GB"):
        check_data_size(100_000, 224, 2062 / 251, None, "s3://bucket/scans")


def test_cli_flags_reach_the_guard(phantom_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    code = main(["data", "prepare", str(phantom_dir), "--out", out, "--max-images", "20"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "than max_images=20" in err[0]
    code = main(["data", "prepare", str(phantom_dir), "--out", out, "--memory-budget-gb", "0.001"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "over the memory budget" in err[0]
