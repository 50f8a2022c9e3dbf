"""The post-activation ResNet with dual BatchNorm that ACL, DynACL and AIR train, and ACL's projection head.

ACL `models/resnet_multi_bn.py` (DynACL's and AIR's files are the same network): torchvision's `BasicBlock`
(conv3x3(stride) → BN → ReLU → conv3x3 → BN, plus the shortcut — the identity, or a 1x1 conv(stride) + BN where
the shape changes — then ReLU), a 3x3 stride-1 stem conv + BN + ReLU with no max-pool (`maxpool = nn.Identity()`),
stages of 64/128/256/512 channels at strides 1/2/2/2, global average pooling, and the ImageNet normalisation inside
the model (`NormalizeByChannelMeanStd`). Convolutions have no bias.

**Dual BatchNorm.** Every BatchNorm (`batch_norm_multiple`) holds one BatchNorm per route and normalises with the
route the call names: ACL's `bn_names=['normal', 'pgd']` are the routes `clean` and `adversarial` here
(`bn_list.0` and `bn_list.1` of their checkpoints). Convolutions and Dense layers are shared by the routes. In
training mode only the named route's statistics move.

**Projection head** (`proj_head`, ACL `resnet_multi_bn.py:181-216`): Linear(C, C) with bias → BN → ReLU →
Linear(C, C, no bias) → BN → ReLU → Linear(C, C, no bias) → BN, every BN dual; C is the backbone's feature width
(512 for ResNet-18), so the width follows the backbone.

The parts keep the house's split (docs/architecture.md, "Backbones"): `trunk` (normalisation, stem, stages 1-3),
`stage4` (stage 4, whose last block ends in its ReLU), then the pool and the `projection` head. Initialisation is
ACL's: convolutions N(0, 2 / (k·k·out)) (`kaiming_normal_(mode='fan_out')`), BatchNorm 1/0, Linear layers
PyTorch's default U(±1/√fan_in) for weights and biases. BatchNorm momentum/epsilon are PyTorch's defaults
(0.1 / 1e-5), as the house's; the running variance moves with the biased batch variance (Keras) where PyTorch uses
the unbiased one, a difference in training-mode statistics only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras

from advss_tf.models.batch_norm import FusedBatchNormalization
from advss_tf.models.layers import BN_EPSILON, BN_MOMENTUM, ImageNormalization, fan_out_conv

CLEAN = "clean"  # ACL's bn_name 'normal'
ADVERSARIAL = "adversarial"  # ACL's bn_name 'pgd'
ROUTES = (CLEAN, ADVERSARIAL)  # in ACL's bn_names order: route i is bn_list.i
STAGE_STRIDES = (1, 2, 2, 2)
RESNET18 = dict(blocks=(2, 2, 2, 2), planes=(64, 128, 256, 512), stem=64)  # ACL resnet_multi_bn.py:343-352


def _check_route(route: str | None, routes: Sequence[str]) -> int:
    """The index of `route` among `routes`; None is the last one (adversarial, for ACL's two)."""
    if route is None:
        return len(routes) - 1
    if route not in routes:
        raise ValueError(f"unknown BatchNorm route {route!r}; this model has: {', '.join(routes)}")
    return list(routes).index(route)


@keras.saving.register_keras_serializable(package="advss_tf")
class DualBatchNormalization(keras.layers.Layer):
    """One BatchNormalization per route (ACL's `batch_norm_multiple`); `call(x, training, route)` normalises with
    the named route's, and in training mode moves only its statistics. Any rank (BatchNorm2d or BatchNorm1d)."""

    def __init__(self, routes: Sequence[str] = ROUTES, synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.routes = tuple(routes)
        self.synchronized = synchronized
        self.norms = [
            FusedBatchNormalization(
                momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=synchronized, name=f"{self.name}_{route}"
            )
            for route in self.routes
        ]

    def build(self, input_shape):
        for norm in self.norms:
            norm.build(input_shape)

    def norm(self, route: str) -> keras.layers.BatchNormalization:
        """The BatchNormalization layer of `route`."""
        return self.norms[_check_route(route, self.routes)]

    def call(self, x, training=None, route: str | None = None):
        return self.norm(route)(x, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "routes": list(self.routes), "synchronized": self.synchronized}


@keras.saving.register_keras_serializable(package="advss_tf")
class PostActivationBlock(keras.layers.Layer):
    """torchvision's BasicBlock with dual BatchNorm: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, filters: int, stride: int = 1, routes: Sequence[str] = ROUTES, sync_bn: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.stride, self.routes, self.sync_bn = filters, stride, tuple(routes), sync_bn
        self.pad = keras.layers.ZeroPadding2D(1) if stride != 1 else None
        self.conv1 = fan_out_conv(filters, 3, stride, f"{self.name}_conv1")
        self.bn1 = DualBatchNormalization(self.routes, sync_bn, name=f"{self.name}_bn1")
        self.conv2 = fan_out_conv(filters, 3, 1, f"{self.name}_conv2")
        self.bn2 = DualBatchNormalization(self.routes, sync_bn, name=f"{self.name}_bn2")
        self.shortcut = None
        self.shortcut_bn = None

    def build(self, input_shape):
        if self.stride != 1 or input_shape[-1] != self.filters:  # ACL's Downsample_multiple
            self.shortcut = fan_out_conv(self.filters, 1, self.stride, f"{self.name}_shortcut")
            self.shortcut_bn = DualBatchNormalization(self.routes, self.sync_bn, name=f"{self.name}_shortcut_bn")

    def call(self, x, training=None, route: str | None = None):
        h = self.conv1(self.pad(x) if self.pad is not None else x)
        h = keras.ops.relu(self.bn1(h, training=training, route=route))
        h = self.bn2(self.conv2(h), training=training, route=route)
        shortcut = x
        if self.shortcut is not None:
            shortcut = self.shortcut_bn(self.shortcut(x), training=training, route=route)
        return keras.ops.relu(h + shortcut)

    def compute_output_shape(self, input_shape):
        size = [None if s is None else -(-s // self.stride) for s in input_shape[1:3]]
        return (input_shape[0], *size, self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "stride": self.stride,
            "routes": list(self.routes),
            "sync_bn": self.sync_bn,
        }


class _Sequence(keras.layers.Layer):
    """Layers applied in order, each given `training` and `route` where it takes them."""

    def __init__(self, layers: list, **kwargs):
        super().__init__(**kwargs)
        self.parts = layers

    def call(self, x, training=None, route: str | None = None):
        for layer in self.parts:
            if isinstance(layer, (PostActivationBlock, DualBatchNormalization)):
                x = layer(x, training=training, route=route)
            else:
                x = layer(x)
        return x


def _stage(stage: int, blocks: int, filters: int, routes, sync_bn: bool) -> list:
    return [
        PostActivationBlock(
            filters, STAGE_STRIDES[stage - 1] if i == 0 else 1, routes, sync_bn, name=f"stage{stage}_block{i + 1}"
        )
        for i in range(blocks)
    ]


@keras.saving.register_keras_serializable(package="advss_tf")
class ProjectionHead(keras.layers.Layer):
    """ACL's `proj_head`: (Dense → dual BN → ReLU) ×2 → Dense → dual BN, all of width `units`; the first Dense has a
    bias, the others none (a BN follows each)."""

    def __init__(self, units: int, routes: Sequence[str] = ROUTES, sync_bn: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.routes, self.sync_bn = units, tuple(routes), sync_bn
        self.dense = []
        self.norms = []
        for i in range(1, 4):
            self.dense.append(keras.layers.Dense(units, use_bias=i == 1, name=f"{self.name}_fc{i}"))
            self.norms.append(DualBatchNormalization(self.routes, sync_bn, name=f"{self.name}_bn{i}"))

    def build(self, input_shape):
        fan_in = input_shape[-1]
        for dense in self.dense:  # PyTorch's nn.Linear default: U(±1/√fan_in), weights and bias alike
            bound = 1.0 / math.sqrt(fan_in)
            dense.kernel_initializer = keras.initializers.RandomUniform(-bound, bound)
            dense.bias_initializer = keras.initializers.RandomUniform(-bound, bound)
            dense.build((None, fan_in))
            fan_in = self.units
        for norm in self.norms:
            norm.build((None, self.units))

    def call(self, x, training=None, route: str | None = None):
        for i, (dense, norm) in enumerate(zip(self.dense, self.norms, strict=True)):
            x = norm(dense(x), training=training, route=route)
            if i < 2:
                x = keras.ops.relu(x)
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "routes": list(self.routes), "sync_bn": self.sync_bn}


class DualBNResNet(keras.Model):
    """Images in [0, 1] → ACL's projection (float32 [N, C4]) through the BatchNorm route `route` (default: the last
    route, adversarial for ACL's two); `features` gives the pooled backbone features. Holds its parts by name: `trunk`, `stage4`, `projection` (`checkpoint_items`)."""

    def __init__(
        self,
        blocks: Sequence[int],
        planes: Sequence[int],
        stem: int,
        routes: Sequence[str] = ROUTES,
        sync_bn: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(blocks) != len(STAGE_STRIDES) or len(planes) != len(STAGE_STRIDES):
            raise ValueError(f"a post-activation ResNet has {len(STAGE_STRIDES)} stages, got {blocks} / {planes}")
        self.routes = tuple(routes)
        self.blocks, self.planes, self.stem = tuple(blocks), tuple(planes), stem
        stem_layers = [
            ImageNormalization(name="normalize"),
            fan_out_conv(stem, 3, 1, "stem_conv"),
            DualBatchNormalization(self.routes, sync_bn, name="stem_bn"),
            keras.layers.ReLU(name="stem_relu"),
        ]
        stages = [block for s in (1, 2, 3) for block in _stage(s, blocks[s - 1], planes[s - 1], self.routes, sync_bn)]
        self.trunk = _Sequence(stem_layers + stages, name="trunk")
        self.stage4 = _Sequence(_stage(4, blocks[3], planes[3], self.routes, sync_bn), name="stage4")
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.projection = ProjectionHead(planes[3], self.routes, sync_bn, name="projection")
        self(keras.ops.zeros((1, 32, 32, 3)))  # creates every weight (the shortcuts are made in build)

    @property
    def feature_dim(self) -> int:
        return self.planes[3]

    def features(self, images, training: bool = False, route: str | None = None):
        """Pooled stage-4 features [N, C4] through `route`'s BatchNorms."""
        _check_route(route, self.routes)
        x = self.trunk(images, training=training, route=route)
        return self.pool(self.stage4(x, training=training, route=route))

    def call(self, images, training: bool = False, route: str | None = None):
        z = self.projection(self.features(images, training, route), training=training, route=route)
        return keras.ops.cast(z, "float32")

    @property
    def checkpoint_items(self) -> dict:
        return dict(trunk=self.trunk, stage4=self.stage4, projection=self.projection)


def build_post_resnet(
    blocks: Sequence[int] = RESNET18["blocks"],
    planes: Sequence[int] = RESNET18["planes"],
    stem: int = RESNET18["stem"],
    routes: Sequence[str] = ROUTES,
    sync_bn: bool = False,
    name: str = "post_resnet",
) -> DualBNResNet:
    """ACL's network (defaults: ResNet-18 with the clean and adversarial routes), built and ready to call."""
    return DualBNResNet(blocks, planes, stem, routes, sync_bn, name=name)
