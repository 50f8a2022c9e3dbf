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
`stage4` (stage 4, whose last block ends in its ReLU), then the pool and the `projection` head.

A family of models/backbones.py (`resnet18_post`, `tiny_post`): `build_trunk` / `build_stage4` from an `ArchSpec`
and explicit arguments, with one BatchNorm route (`SINGLE`) unless given ACL's two; imports only models/layers.py.
`copy_route` copies one route of a two-route part into a one-route part of the same spec (fine-tuning from an
ACL export), of this family or of a functional one (`layers.RoutedPart`).

The routed network itself is any family's: `DualBNNetwork` holds a routed trunk and stage 4 of whichever family
(the contrastive tasks build them through the registry, `backbones.build_routed`) and ACL's projection head of the
backbone's feature width; `DualBNResNet` is ACL's own, this family's parts in it.

Initialisation is ACL's: convolutions N(0, 2 / (k·k·out)) (`kaiming_normal_(mode='fan_out')`), BatchNorm 1/0, Linear
layers PyTorch's default U(±1/√fan_in) for weights and biases. BatchNorm momentum/epsilon are PyTorch's defaults
(0.1 / 1e-5), as the house's (`layers.batch_norm`, of the layer class the house chooses); the running variance
moves with the biased batch variance (Keras) where PyTorch uses the unbiased one, a difference in training-mode
statistics only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras

from advss_tf.models.layers import (
    ArchSpec,
    ImageNormalization,
    RoutedPart,
    batch_norm,
    check_route,
    fan_out_conv,
    track_by_name,
)

CLEAN = "clean"  # ACL's bn_name 'normal'
ADVERSARIAL = "adversarial"  # ACL's bn_name 'pgd'
ROUTES = (CLEAN, ADVERSARIAL)  # in ACL's bn_names order: route i is bn_list.i
# The one route of a backbone built through the registry (models/backbones.py): the classifier fine-tuning builds,
# or any task but the contrastive ones. Fine-tuning fills it from the route of an export it chooses.
SINGLE = "main"
STAGE_STRIDES = (1, 2, 2, 2)
RESNET18 = dict(blocks=(2, 2, 2, 2), planes=(64, 128, 256, 512), stem=64)  # ACL resnet_multi_bn.py:343-352


@keras.saving.register_keras_serializable(package="advss_tf")
class DualBatchNormalization(keras.layers.Layer):
    """One BatchNormalization per route (ACL's `batch_norm_multiple`); `call(x, training, route)` normalises with
    the named route's, and in training mode moves only its statistics. Any rank (BatchNorm2d or BatchNorm1d)."""

    def __init__(self, routes: Sequence[str] = ROUTES, synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.routes = tuple(routes)
        self.synchronized = synchronized
        # The house's BatchNorm (PyTorch's momentum/epsilon, the layer class `layers.batch_norm` chooses).
        self.norms = tuple(batch_norm(synchronized, f"{self.name}_{route}") for route in self.routes)
        track_by_name(self, {route: norm for route, norm in zip(self.routes, self.norms, strict=True)})

    def build(self, input_shape):
        for norm in self.norms:
            norm.build(input_shape)

    def norm(self, route: str) -> keras.layers.BatchNormalization:
        """The BatchNormalization layer of `route`."""
        return self.norms[check_route(route, self.routes)]

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


class PostActivationPart(keras.Model):
    """A part of the network (`trunk` or `stage4`): its layers in order, each given `training` and `route` where it
    takes them. `parts` lists them (stem normalisation, conv, BN, ReLU, then the blocks)."""

    def __init__(self, parts: list, routes: Sequence[str] = ROUTES, **kwargs):
        super().__init__(**kwargs)
        self.parts = tuple(parts)
        self.routes = tuple(routes)
        track_by_name(self, {layer.name: layer for layer in self.parts})

    def call(self, x, training=None, route: str | None = None):
        check_route(route, self.routes)
        for layer in self.parts:
            if isinstance(layer, (PostActivationBlock, DualBatchNormalization)):
                x = layer(x, training=training, route=route)
            else:
                x = layer(x)
        return x

    def compute_output_shape(self, input_shape):
        for layer in self.parts:
            if not isinstance(layer, (ImageNormalization, DualBatchNormalization, keras.layers.ReLU)):  # shape kept
                input_shape = layer.compute_output_shape(input_shape)
        return input_shape


def _stage(spec: ArchSpec, stage: int, routes, sync_bn: bool) -> list:
    return [
        PostActivationBlock(
            spec.planes[stage - 1],
            STAGE_STRIDES[stage - 1] if i == 0 else 1,
            routes,
            sync_bn,
            name=f"stage{stage}_block{i + 1}",
        )
        for i in range(spec.blocks[stage - 1])
    ]


def _check_spec(spec: ArchSpec) -> None:
    if len(spec.blocks) != len(STAGE_STRIDES) or len(spec.planes) != len(STAGE_STRIDES):
        raise ValueError(f"a post-activation ResNet has {len(STAGE_STRIDES)} stages, got {spec.blocks} / {spec.planes}")


def stage_channels(spec: ArchSpec, stage: int) -> int:
    """Output channels of stage 1..4 (a basic block's width)."""
    return spec.planes[stage - 1]


def build_trunk(
    spec: ArchSpec, *, sync_bn: bool, routes: Sequence[str] = (SINGLE,), name: str = "trunk"
) -> PostActivationPart:
    """Normalisation + stem (3x3 conv stride 1 + BN + ReLU, no max-pool) + stages 1-3, built: images [N, H, W, 3] in
    [0, 1] → [N, H/4, W/4, C3]. `routes`: its BatchNorm routes (the registry's one, or ACL's two)."""
    _check_spec(spec)
    stem = [
        ImageNormalization(name="normalize"),
        fan_out_conv(spec.stem, 3, 1, "stem_conv"),
        DualBatchNormalization(routes, sync_bn, name="stem_bn"),
        keras.layers.ReLU(name="stem_relu"),
    ]
    stages = [block for s in (1, 2, 3) for block in _stage(spec, s, routes, sync_bn)]
    part = PostActivationPart(stem + stages, routes, name=name)
    part(keras.ops.zeros((1, 32, 32, 3)))  # creates every weight (the shortcuts are made in build)
    return part


def build_stage4(
    spec: ArchSpec, *, sync_bn: bool, routes: Sequence[str] = (SINGLE,), name: str = "stage4"
) -> PostActivationPart:
    """Stage 4, built: trunk feature map → [N, H/8, W/8, C4]; its last block ends in its ReLU."""
    _check_spec(spec)
    part = PostActivationPart(_stage(spec, 4, routes, sync_bn), routes, name=name)
    part(keras.ops.zeros((1, 4, 4, stage_channels(spec, 3))))
    return part


def route_variables(layer, route: str | None) -> list:
    """The variables `layer` computes with on `route`, in a fixed order: every weight the routes share, and the named
    route's BatchNorm weights and statistics. Two parts of the same spec give lists that correspond one to one,
    whatever their routes (fine-tuning copies an export's route into a one-route classifier with it). A part of
    another family is a `RoutedPart` (its route's functional model) or, with one route, a functional model."""
    if isinstance(layer, DualBatchNormalization):
        return list(layer.norm(route).weights)
    if isinstance(layer, RoutedPart):
        return list(layer.route_model(route).weights)
    if isinstance(layer, PostActivationPart):
        return [v for part in layer.parts for v in route_variables(part, route)]
    if isinstance(layer, PostActivationBlock):
        sub = [layer.conv1, layer.bn1, layer.conv2, layer.bn2, layer.shortcut, layer.shortcut_bn]
        return [v for part in sub if part is not None for v in route_variables(part, route)]
    if isinstance(layer, ProjectionHead):
        return [
            v for d, n in zip(layer.dense, layer.norms, strict=True) for p in (d, n) for v in route_variables(p, route)
        ]
    return list(layer.weights)


def acl_module_names(network: DualBNNetwork) -> list[tuple[str, keras.layers.Layer]]:
    """Each layer of a post-activation `network` that holds tensors, with the module name ACL's state dict gives it
    (`resnet_multi_bn.py`; a key is that name, then the tensor's: `layer2.0.downsample.bn.bn_list.1.running_var`):
    the stem `conv1`, `bn1`; our `stage<s>_block<b>` is their `layer<s>.<b - 1>` (`conv1`, `bn1`, `conv2`, `bn2`,
    `downsample.conv`, `downsample.bn`); the projection head `fc.fc<i>`, `fc.bn<i>`. The one map from their names to
    ours, for the importer (importers/contrastive.py) and the PyTorch twin (peer/torch_acl_resnet.py)."""
    stem = {layer.name: layer for layer in network.trunk.parts}
    out: list[tuple[str, keras.layers.Layer]] = [("conv1", stem["stem_conv"]), ("bn1", stem["stem_bn"])]
    blocks = [p for p in network.trunk.parts if isinstance(p, PostActivationBlock)] + list(network.stage4.parts)
    for block in blocks:
        stage, index = block.name.removeprefix("stage").split("_block")
        theirs = f"layer{stage}.{int(index) - 1}"
        out += [(f"{theirs}.{attr}", getattr(block, attr)) for attr in ("conv1", "bn1", "conv2", "bn2")]
        if block.shortcut is not None:  # their Downsample_multiple: conv + multi-BN
            out += [(f"{theirs}.downsample.conv", block.shortcut), (f"{theirs}.downsample.bn", block.shortcut_bn)]
    head = network.projection
    for i, (dense, norm) in enumerate(zip(head.dense, head.norms, strict=True), start=1):
        out += [(f"fc.fc{i}", dense), (f"fc.bn{i}", norm)]
    return out


def _route_free_name(variable, route: str | None) -> str:
    """`layer/variable` of `variable`'s path, without the route's suffix on the layer's name: the same for a variable
    and its counterpart in another route or another part of the same spec."""
    name = "/".join(variable.path.split("/")[-2:])
    return name.replace(f"_{route}/", "/") if route is not None else name


def copy_route(source, target, route: str) -> None:
    """Assigns `source`'s variables of `route` to `target`'s variables of its own (last) route; a `target` without
    routes (a functional family's one-route part) is its one route.

    Raises:
      ValueError: the two parts are not of the same spec (count, shapes or layer names differ).
    """
    target_route = target.routes[-1] if hasattr(target, "routes") else None
    src, dst = route_variables(source, route), route_variables(target, target_route)
    if len(src) != len(dst) or any(
        tuple(s.shape) != tuple(d.shape) or _route_free_name(s, route) != _route_free_name(d, target_route)
        for s, d in zip(src, dst, strict=False)
    ):
        raise ValueError(f"{source.name} and {target.name} are not the same network: their variables differ")
    for s, d in zip(src, dst, strict=True):
        d.assign(s)


@keras.saving.register_keras_serializable(package="advss_tf")
class ProjectionHead(keras.layers.Layer):
    """ACL's `proj_head`: (Dense → dual BN → ReLU) ×2 → Dense → dual BN, all of width `units`; the first Dense has a
    bias, the others none (a BN follows each)."""

    def __init__(self, units: int, routes: Sequence[str] = ROUTES, sync_bn: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.routes, self.sync_bn = units, tuple(routes), sync_bn
        self.dense = tuple(keras.layers.Dense(units, use_bias=i == 1, name=f"{self.name}_fc{i}") for i in (1, 2, 3))
        self.norms = tuple(DualBatchNormalization(self.routes, sync_bn, name=f"{self.name}_bn{i}") for i in (1, 2, 3))
        track_by_name(self, {f"fc{i}": d for i, d in enumerate(self.dense, 1)})
        track_by_name(self, {f"bn{i}": n for i, n in enumerate(self.norms, 1)})

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


class DualBNNetwork(keras.Model):
    """Images in [0, 1] → ACL's projection (float32 [N, feature_dim]) through the BatchNorm route `route` (default:
    the last route, adversarial for ACL's two); `features` gives the pooled backbone features. Holds its parts by
    name: `trunk`, `stage4` (any family's, built with these routes: `PostActivationPart`s, or `RoutedPart`s of a
    functional family) and the `projection` head of width `feature_dim` (`checkpoint_items`)."""

    def __init__(
        self,
        trunk: keras.Model,
        stage4: keras.Model,
        feature_dim: int,
        routes: Sequence[str] = ROUTES,
        sync_bn: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.routes = tuple(routes)
        self.feature_dim = int(feature_dim)
        self.trunk, self.stage4 = trunk, stage4
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.projection = ProjectionHead(self.feature_dim, self.routes, sync_bn, name="projection")
        self(keras.ops.zeros((1, 32, 32, 3)))

    def features(self, images, training: bool = False, route: str | None = None):
        """Pooled stage-4 features [N, feature_dim] through `route`'s BatchNorms."""
        x = self.trunk(images, training=training, route=route)
        return self.pool(self.stage4(x, training=training, route=route))

    def call(self, images, training: bool = False, route: str | None = None):
        z = self.projection(self.features(images, training, route), training=training, route=route)
        return keras.ops.cast(z, "float32")

    @property
    def checkpoint_items(self) -> dict:
        return dict(trunk=self.trunk, stage4=self.stage4, projection=self.projection)


class DualBNResNet(DualBNNetwork):
    """ACL's network: the post-activation ResNet of `spec` with the BatchNorm routes `routes`, and its projection."""

    def __init__(self, spec: ArchSpec, routes: Sequence[str] = ROUTES, sync_bn: bool = False, **kwargs):
        trunk = build_trunk(spec, sync_bn=sync_bn, routes=routes)
        stage4 = build_stage4(spec, sync_bn=sync_bn, routes=routes)
        super().__init__(trunk, stage4, stage_channels(spec, len(STAGE_STRIDES)), routes, sync_bn, **kwargs)
        self.spec = spec


def build_post_resnet(
    blocks: Sequence[int] = RESNET18["blocks"],
    planes: Sequence[int] = RESNET18["planes"],
    stem: int = RESNET18["stem"],
    routes: Sequence[str] = ROUTES,
    sync_bn: bool = False,
    name: str = "post_resnet",
) -> DualBNResNet:
    """ACL's network (defaults: ResNet-18 with the clean and adversarial routes), built and ready to call."""
    spec = ArchSpec("post_resnet", "basic", tuple(blocks), tuple(planes), stem)
    return DualBNResNet(spec, routes, sync_bn, name=name)
