"""The seed's five backbones, each cut where its ImageNet classifier began.

Every builder returns a feature extractor whose parameter names are the upstream ones
(``features.0.weight``, ``layer4.2.conv3.weight``, ``block12.rep.1.weight``...), so a
torchvision or timm state dict without its classifier loads onto it unchanged. Its blocks follow
the units the seed's Keras models are unfrozen by; see each builder for the choice.
torchvision and timm are imported inside the builders, as a model needs only its own library.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import nn

from braintl.models.registry import register
from braintl.models.spec import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, Block
from braintl.models.weights import fetch_imagenet
from braintl.models.without_dynamo import meta_build

PRETRAINED_STRATEGIES = ("frozen", "finetune", "progressive", "full")
SCRATCH_CHANNELS = (32, 64, 128)


def _span(prefix: str, first: int, last: int) -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}" for i in range(first, last + 1))


def _torchvision(name: str, builder: Callable[..., nn.Module], weights, pretrained: bool):
    """Build a torchvision model; with ``pretrained``, through torchvision's weights API, which
    downloads into (or reads from) the torch.hub cache under TORCH_HOME."""
    if not pretrained:
        return builder(weights=None)
    source = f"torchvision {type(weights).__name__}.{weights.name}"
    return fetch_imagenet(name, source, weights.url, None, lambda: builder(weights=weights))


# Each backbone declares its whole spec beside its builder, as timm's registry does. The entries
# look alike on purpose (the duplicates tool pairs them): the numbers that differ (block spans,
# feature size, weights) are the point, and a shared builder would hide them.
@register(
    BackboneSpec(
        name="mobilenet_v2",
        blocks=(
            Block("stem", ("features.0",)),
            Block("stage1", ("features.1",)),
            Block("stage2", _span("features", 2, 3)),
            Block("stage3", _span("features", 4, 6)),
            Block("stage4", _span("features", 7, 10)),
            Block("stage5", _span("features", 11, 13)),
            Block("stage6", _span("features", 14, 16)),
            Block("stage7", _span("features", 17, 18)),
        ),
        feature_size=1280,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        strategies=PRETRAINED_STRATEGIES,
        pretrained="torchvision MobileNet_V2_Weights.IMAGENET1K_V2",
        imports=("torchvision.models",),
    )
)
def mobilenet_v2(pretrained: bool) -> nn.Module:
    """MobileNetV2 without its classifier: 1280 channels, stride 32.

    Blocks are the rows of the paper's bottleneck table (stem conv, then one block per
    (t, c, n, s) row), the last row joined with the final 1×1 conv to 1280 channels: unfreezing
    Keras' sixteen single inverted residuals one by one would take too many stages.
    """
    from torchvision.models import MobileNet_V2_Weights
    from torchvision.models import mobilenet_v2 as build

    net = _torchvision("mobilenet_v2", build, MobileNet_V2_Weights.IMAGENET1K_V2, pretrained)
    return nn.Sequential(OrderedDict(features=net.features))


@register(
    BackboneSpec(
        name="vgg16",
        blocks=(
            Block("block1", _span("features", 0, 4)),
            Block("block2", _span("features", 5, 9)),
            Block("block3", _span("features", 10, 16)),
            Block("block4", _span("features", 17, 23)),
            Block("block5", _span("features", 24, 30)),
        ),
        feature_size=512,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        strategies=PRETRAINED_STRATEGIES,
        pretrained="torchvision VGG16_Weights.IMAGENET1K_V1",
        imports=("torchvision.models",),
    )
)
def vgg16(pretrained: bool) -> nn.Module:
    """VGG-16's convolutional part, up to and including block5's max-pool (512 channels, as
    Keras' ``include_top=False``); blocks are Keras' block1..block5, each ending in its pool."""
    from torchvision.models import VGG16_Weights
    from torchvision.models import vgg16 as build

    if pretrained:
        features = _torchvision("vgg16", build, VGG16_Weights.IMAGENET1K_V1, True).features
    else:
        # Its classifier (120 M parameters, dropped here) takes 2 s of random initialisation:
        # build on the meta device and initialise the kept convolutions as torchvision does.
        with meta_build():
            features = build(weights=None).features
        features = features.to_empty(device="cpu")
        for module in features.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
    return nn.Sequential(OrderedDict(features=features))


@register(
    BackboneSpec(
        name="resnet50",
        blocks=(
            Block("stem", ("conv1", "bn1", "relu", "maxpool")),
            Block("layer1", ("layer1",)),
            Block("layer2", ("layer2",)),
            Block("layer3", ("layer3",)),
            Block("layer4", ("layer4",)),
        ),
        feature_size=2048,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        strategies=PRETRAINED_STRATEGIES,
        pretrained="torchvision ResNet50_Weights.IMAGENET1K_V2",
        imports=("torchvision.models",),
    )
)
def resnet50(pretrained: bool) -> nn.Module:
    """ResNet-50 without average pool and fc; blocks are its stem and four stages (Keras'
    conv1..conv5). The V2 weights are torchvision's better recipe (80.9% vs 76.1% top-1)."""
    from torchvision.models import ResNet50_Weights
    from torchvision.models import resnet50 as build

    net = _torchvision("resnet50", build, ResNet50_Weights.IMAGENET1K_V2, pretrained)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in names))


_XCEPTION = "legacy_xception.tf_in1k"


@register(
    BackboneSpec(
        name="xception",
        blocks=(
            Block("block1", ("conv1", "bn1", "act1", "conv2", "bn2", "act2")),
            *(Block(f"block{i + 1}", (f"block{i}",)) for i in range(1, 13)),
            Block("block14", ("conv3", "bn3", "act3", "conv4", "bn4", "act4")),
        ),
        feature_size=2048,
        # Keras' "tf" preprocessing, x / 127.5 - 1, which the ported weights expect.
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        strategies=PRETRAINED_STRATEGIES,
        pretrained=f"timm {_XCEPTION}",
        imports=("timm",),
    )
)
def xception(pretrained: bool) -> nn.Module:
    """Xception as in the seed, through timm's ``legacy_xception``.

    The seed used Keras' ``applications.Xception``: Chollet's original network (36 conv layers
    in 14 modules, often quoted as 71 layers deep). timm's ``legacy_xception`` is that
    architecture, with Keras' ImageNet weights ported (``tf_in1k``, 78.9% top-1). timm's
    ``xception41/65/71`` are instead DeepLabv3+'s "aligned" Xception (strided convs for max-pools,
    BatchNorm after every separable conv, more middle-flow blocks): another network, whose "71"
    is its own depth. Blocks are Keras' block1..block14 (timm's stem, block1..block12, and the
    exit flow's two separable convs), so the last block is Keras' ``block14``.
    """
    import timm

    def build(with_weights: bool) -> nn.Module:
        # num_classes=0, global_pool="": timm's documented way to get the unpooled feature map.
        return timm.create_model(_XCEPTION, pretrained=with_weights, num_classes=0, global_pool="")

    if not pretrained:
        return build(False)
    cfg = timm.get_pretrained_cfg(_XCEPTION)
    return fetch_imagenet(
        "xception", f"timm {_XCEPTION}", cfg.url, cfg.hf_hub_id, lambda: build(True)
    )


@register(
    BackboneSpec(
        name="scratch_cnn",
        blocks=tuple(Block(f"block{i}", (f"block{i}",)) for i in (1, 2, 3)),
        feature_size=SCRATCH_CHANNELS[-1],
        # Nothing pretrained to match: centre the pixels on [-1, 1].
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        strategies=("full",),
        pretrained=None,
    )
)
def scratch_cnn(pretrained: bool) -> nn.Module:
    """The seed's 2D-CNN: three blocks of Conv2D(3×3, relu) → BatchNorm → Dropout(0.1), with
    32, 64 and 128 filters. Each block ends in a 2×2 max-pool, which the seed does not list:
    without it the paper head's Flatten would see 224²×128 values (1.6 G weights at 256 units);
    with it, 28²×128. ``pretrained`` is never true (the spec has no pretrained weights).
    """
    blocks, channels = OrderedDict(), 3
    for i, width in enumerate(SCRATCH_CHANNELS, start=1):
        blocks[f"block{i}"] = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(channels, width, kernel_size=3, padding=1),
                relu=nn.ReLU(inplace=True),
                bn=nn.BatchNorm2d(width),
                drop=nn.Dropout(0.1),
                pool=nn.MaxPool2d(2),
            )
        )
        channels = width
    return nn.Sequential(blocks)
