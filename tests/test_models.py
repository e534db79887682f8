"""braintl.models: registry, heads, strategies and weights, at 64 px so every backbone is cheap."""

from __future__ import annotations

import copy
import functools
import socket
import urllib.request

import pytest
import torch
import torch.nn.functional as F

from braintl.errors import UserError
from braintl.models import (
    HEADS,
    STRATEGIES,
    BrainTLModel,
    WeightsError,
    apply_strategy,
    create_model,
    list_models,
    list_strategies,
    resolve_strategy,
)

SIZE = 64
MODELS = ("mobilenet_v2", "resnet50", "scratch_cnn", "vgg16", "xception")
PRETRAINED = ("mobilenet_v2", "resnet50", "vgg16", "xception")


@functools.cache
def _template(name: str, head: str) -> BrainTLModel:
    torch.manual_seed(0)
    units = None if head == "gap" else 16  # small Flatten head: VGG's would be 2048×256 otherwise
    return create_model(name, head=head, head_units=units, image_size=SIZE)


def build(name: str, head: str = "paper") -> BrainTLModel:
    """A fresh copy of a model built once per session (VGG-16 alone takes seconds to build)."""
    return copy.deepcopy(_template(name, head))


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)


def labels(n: int = 4) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32) % 2


def train_steps(model: BrainTLModel, steps: int = 3) -> None:
    """A few Adam steps in train mode, with the optimizer built from the applied plan."""
    optimizer = torch.optim.Adam(model.plan.param_groups(model, lr=1e-2, backbone_lr_factor=0.5))
    model.train()
    for step in range(steps):
        loss = F.binary_cross_entropy_with_logits(model(images(seed=step)), labels())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def snapshot(model: BrainTLModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: BrainTLModel) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def owned_by(model: BrainTLModel, blocks, key: str) -> bool:
    return key.startswith("backbone.") and any(
        b.owns(key.removeprefix("backbone.")) for b in blocks
    )


# --- registry and forward contract -----------------------------------------------------------


def test_registry_holds_the_seed_backbones():
    assert list_models() == sorted(MODELS)
    assert list_strategies() == STRATEGIES
    assert list_strategies("scratch_cnn") == ("full",)
    assert list_strategies("xception") == STRATEGIES


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name):
    model = build(name)
    model.train()
    logits = model(images())
    assert logits.shape == (4,) and logits.dtype == torch.float32
    F.binary_cross_entropy_with_logits(logits, labels()).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_uint8_and_float_pixels_agree_and_split_recomposes(name):
    model = build(name).eval()
    x = images()
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(model(x.float()), logits)
        torch.testing.assert_close(model.forward_head(model.features(x)), logits)


def test_logits_stay_float32_under_autocast():
    model = build("scratch_cnn").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.features(images()).dtype == torch.bfloat16
        assert model(images()).dtype == torch.float32


@pytest.mark.parametrize("name", MODELS)
def test_spec_blocks_partition_the_backbone(name):
    model = build(name)
    spec = model.spec
    modules = dict(model.backbone.named_modules())
    for block in spec.blocks:
        assert all(prefix in modules for prefix in block.modules), block
    for param, _ in model.backbone.named_parameters():
        owners = [block.name for block in spec.blocks if block.owns(param)]
        assert len(owners) == 1, (param, owners)
    for block in spec.blocks:
        assert any(block.owns(param) for param, _ in model.backbone.named_parameters()), block
    assert model.features(images(2)).shape[1] == spec.feature_size


@pytest.mark.parametrize("name", MODELS)
def test_normalisation_happens_inside(name):
    model = build(name).eval()
    x = images(2)
    mean = torch.tensor(model.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.spec.std).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(x), (x.float() / 255 - mean) / std)
    with torch.no_grad():
        assert torch.equal(model.features(x), model.backbone(model.normalize(x)))
    assert not any(k.startswith("pixel_") for k in model.state_dict())


def test_normalisation_matches_the_pretrained_weights():
    import timm
    from torchvision.models import MobileNet_V2_Weights, ResNet50_Weights, VGG16_Weights

    for name, weights in (
        ("mobilenet_v2", MobileNet_V2_Weights.IMAGENET1K_V2),
        ("resnet50", ResNet50_Weights.IMAGENET1K_V2),
        ("vgg16", VGG16_Weights.IMAGENET1K_V1),
    ):
        spec = build(name).spec
        transform = weights.transforms()
        assert (list(spec.mean), list(spec.std)) == (transform.mean, transform.std), name
        assert weights.name in spec.pretrained
    cfg = timm.get_pretrained_cfg("legacy_xception.tf_in1k")
    spec = build("xception").spec
    assert (spec.mean, spec.std) == (cfg.mean, cfg.std)


def test_config_rebuilds_the_same_architecture():
    model = build("mobilenet_v2", "paper_vgg_ft")
    again = create_model(**model.config)
    assert model.config["dropout"] == (0.23, 0.3) and model.config["head_units"] == 16
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in again.state_dict().items()} == shapes


# --- heads ------------------------------------------------------------------------------------


LAYERS = {
    "paper": ["Flatten", "Linear", "ReLU", "Dropout", "BatchNorm1d", "Linear"],
    "paper_vgg_ft": [
        "AdaptiveAvgPool2d", "Flatten", "BatchNorm1d", "Dropout", "Linear", "ReLU",
        "BatchNorm1d", "Dropout", "Linear",
    ],
    "gap": ["AdaptiveAvgPool2d", "Flatten", "Dropout", "Linear"],
}  # fmt: skip


@pytest.mark.parametrize("head", HEADS)
def test_heads_follow_the_seed(head):
    model = build("vgg16", head)
    assert [type(m).__name__ for m in model.head.layers] == LAYERS[head]
    assert model.head.layers[-1].out_features == (2 if head == "paper" else 1)
    model.train()
    logits = model(images())
    assert logits.shape == (4,)
    logits.sum().backward()


def test_head_defaults_and_overrides():
    paper = create_model("scratch_cnn", image_size=SIZE)
    assert paper.head.units == 256 and paper.head.dropout == (0.1,)
    assert paper.head.layers.fc1.in_features == 128 * 8 * 8  # Flatten of the 8×8×128 map
    vgg_ft = create_model("scratch_cnn", head="paper_vgg_ft", image_size=SIZE)
    assert (vgg_ft.head.units, vgg_ft.head.dropout) == (510, (0.23, 0.3))
    custom = create_model("scratch_cnn", head="paper_vgg_ft", head_units=32, dropout=0.4)
    assert custom.head.layers.fc1.out_features == 32 and custom.head.dropout == (0.4, 0.4)
    assert [m.p for m in custom.head.layers if isinstance(m, torch.nn.Dropout)] == [0.4, 0.4]


def test_paper_head_is_two_class_softmax():
    model = build("scratch_cnn").eval()
    x, y = images(), labels()
    with torch.no_grad():
        z = model.head.layers(model.features(x))
        logit = model(x)
    torch.testing.assert_close(logit, z[:, 1] - z[:, 0])
    torch.testing.assert_close(
        F.binary_cross_entropy_with_logits(logit, y), F.cross_entropy(z, y.long())
    )


# --- strategies -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRETRAINED)
def test_frozen_keeps_backbone_bit_identical(name):
    model = build(name)
    apply_strategy(model, resolve_strategy(model, "frozen"))
    before = snapshot(model)
    train_steps(model)
    assert model.training
    assert all(not m.training for m in map(model.get_submodule, model.frozen_bn))
    diff = changed(before, model)
    assert diff and all(k.startswith("head.") for k in diff), sorted(diff)[:5]


@pytest.mark.parametrize("name", PRETRAINED)
def test_finetune_changes_only_the_last_block_and_head(name):
    model = build(name)
    plan = resolve_strategy(model, "finetune")
    apply_strategy(model, plan)
    assert plan.blocks == (model.spec.blocks[-1].name,)
    before = snapshot(model)
    train_steps(model)
    last = [model.spec.blocks[-1]]
    diff = changed(before, model)
    assert all(k.startswith("head.") or owned_by(model, last, k) for k in diff), sorted(diff)[:5]
    assert any(k.startswith("head.") for k in diff)
    assert any(owned_by(model, last, k) for k in diff)


@pytest.mark.parametrize("name", MODELS)
def test_progressive_unfreezes_from_the_last_block(name):
    model = build(name)
    blocks = model.spec.blocks
    head = {p for p, _ in model.named_parameters() if p.startswith("head.")}
    if "progressive" not in list_strategies(name):
        with pytest.raises(UserError, match="choose one of full"):
            resolve_strategy(model, "progressive", stage=1)
        return
    previous: frozenset[str] = frozenset()
    for stage in range(len(blocks) + 1):
        plan = resolve_strategy(model, "progressive", stage=stage)
        opened = blocks[len(blocks) - stage :]
        assert plan.blocks == tuple(b.name for b in opened)
        expected = head | {p for p, _ in model.named_parameters() if owned_by(model, opened, p)}
        assert plan.trainable == expected
        assert previous < plan.trainable
        previous = plan.trainable
    assert (
        resolve_strategy(model, "progressive", 0).trainable
        == resolve_strategy(model, "frozen").trainable
    )
    assert (
        resolve_strategy(model, "progressive", 1).trainable
        == resolve_strategy(model, "finetune").trainable
    )
    assert previous == {p for p, _ in model.named_parameters()}
    for stage in (-1, len(blocks) + 1):
        with pytest.raises(UserError, match=f"choose 0..{len(blocks)}"):
            resolve_strategy(model, "progressive", stage=stage)


def test_plan_is_exactly_what_requires_grad():
    model = build("resnet50")
    for name, stage in (("full", 0), ("frozen", 0), ("progressive", 2), ("finetune", 0)):
        plan = resolve_strategy(model, name, stage=stage)
        apply_strategy(model, plan)
        assert plan.trainable == {p for p, t in model.named_parameters() if t.requires_grad}
        model.train()
        opened = [b for b in model.spec.blocks if b.name in plan.blocks]
        for module_name, module in model.backbone.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                frozen = not any(b.owns(module_name) for b in opened)
                assert (f"backbone.{module_name}" in model.frozen_bn) == frozen
                assert module.training != frozen


def test_param_groups_scale_only_adapted_backbones():
    model = build("resnet50")
    ids = lambda groups: {id(p) for g in groups for p in g["params"]}  # noqa: E731
    params = dict(model.named_parameters())
    for name, lrs in (("frozen", [1e-3]), ("finetune", [1e-3, 1e-4]), ("full", [1e-3, 1e-3])):
        plan = resolve_strategy(model, name)
        groups = plan.param_groups(model, lr=1e-3, backbone_lr_factor=0.1)
        assert [g["lr"] for g in groups] == pytest.approx(lrs)
        assert ids(groups) == {id(params[p]) for p in plan.trainable}
    groups = resolve_strategy(model, "progressive", 2).param_groups(model, 1e-3, 0.1)
    assert [g["name"] for g in groups] == ["head", "backbone"]


# --- weights ----------------------------------------------------------------------------------


def test_weights_from_a_url(tmp_path):
    torch.manual_seed(1)
    saved = create_model("scratch_cnn", head_units=8, image_size=SIZE)
    path = tmp_path / "model.pt"
    torch.save(saved.state_dict(), path)
    for url in (str(path), path.as_uri()):
        torch.manual_seed(2)
        loaded = create_model("scratch_cnn", weights=url, head_units=8, image_size=SIZE)
        for key, value in saved.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_backbone_weights_from_a_url(tmp_path):
    torch.manual_seed(1)
    saved = create_model("mobilenet_v2", head="gap", image_size=SIZE)
    path = tmp_path / "backbone.pt"
    torch.save(saved.backbone.state_dict(), path)
    loaded = create_model("mobilenet_v2", weights=str(path), head="gap", image_size=SIZE)
    for key, value in saved.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(create_model("scratch_cnn", head_units=8, image_size=SIZE).state_dict(), path)
    with pytest.raises(WeightsError, match=r"head\.layers\.fc1\.weight: file \[8, 8192\]") as err:
        create_model("scratch_cnn", weights=str(path), head_units=8, image_size=96)
    assert "image_size" in str(err.value) and "\n" not in str(err.value)
    torch.save(build("resnet50").backbone.state_dict(), path)
    with pytest.raises(WeightsError, match=r"missing keys .*unexpected keys \(e\.g\. bn1"):
        create_model("mobilenet_v2", weights=str(path), head="gap", image_size=SIZE)


def test_unreadable_weights_name_the_fix(tmp_path):
    with pytest.raises(WeightsError, match="no such file; weights must be 'imagenet', 'none'"):
        create_model("scratch_cnn", weights="imagnet", image_size=SIZE)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a PyTorch state dict"):
        create_model("scratch_cnn", weights=str(garbage), image_size=SIZE)
    torch.save([1, 2, 3], garbage)
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        create_model("scratch_cnn", weights=str(garbage), image_size=SIZE)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network and an empty cache on any machine: downloads go through a local port that
    refuses connections, and TORCH_HOME / the Hugging Face cache point at empty folders."""
    import huggingface_hub.constants

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, proxy)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # rebuilt from the variables above
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    yield tmp_path / "torch" / "hub" / "checkpoints"
    closed.close()


@pytest.mark.parametrize("name", ["mobilenet_v2", "xception"])
def test_imagenet_without_network_names_the_cache(offline, name):
    with pytest.raises(WeightsError) as err:
        create_model(name, weights="imagenet", image_size=SIZE)
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message
    assert str(offline) in message and "TORCH_HOME" in message
    assert f"create_model('{name}', weights='imagenet')" in message and "air-gapped" in message
    assert not list(offline.glob("*.pth"))  # nothing half-downloaded left in the cache


def test_scratch_has_no_imagenet_weights():
    with pytest.raises(
        WeightsError, match="scratch_cnn has no ImageNet weights: use weights='none'"
    ):
        create_model("scratch_cnn", weights="imagenet")


# --- user errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: create_model("resnet5"),
         "unknown backbone 'resnet5': choose one of mobilenet_v2, resnet50, scratch_cnn, vgg16, "
         "xception"),
        (lambda: create_model("scratch_cnn", head="dense"),
         "choose one of paper, paper_vgg_ft, gap"),
        (lambda: create_model("scratch_cnn", num_classes=3), "binary"),
        (lambda: create_model("scratch_cnn", image_size=4), "image_size 4 is too small"),
        (lambda: create_model("scratch_cnn", head="gap", head_units=8), "no hidden layer"),
        (lambda: create_model("scratch_cnn", head="paper_vgg_ft", dropout=(0.1,)), "2 dropout"),
        (lambda: resolve_strategy(build("scratch_cnn"), "finetune"),
         "'finetune' does not apply to scratch_cnn .*: choose one of full"),
        (lambda: resolve_strategy(build("scratch_cnn"), "frozen"), "choose one of full"),
        (lambda: resolve_strategy(build("scratch_cnn"), "unfreeze"),
         "unknown strategy 'unfreeze': choose one of frozen, finetune, progressive, full"),
        (lambda: resolve_strategy(build("scratch_cnn"), "full", stage=1),
         "progressive strategy only"),
        (lambda: list_strategies("alexnet"), "unknown backbone 'alexnet'"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line_user_errors(call, pattern):
    with pytest.raises(UserError, match=pattern) as err:
        call()
    assert "\n" not in str(err.value)


def test_plan_for_another_model_is_refused():
    plan = resolve_strategy(build("resnet50"), "finetune")
    with pytest.raises(ValueError, match="resolve it for this model"):
        apply_strategy(build("mobilenet_v2"), plan)
