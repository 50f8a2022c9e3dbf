"""Pre-activation ResNets for 32x32 images, split into the shared trunk (stem + stages 1-3) and stage 4.

The split is the paper's: the trunk is the part every pretext head and the classifier share (θp); each head that
needs one owns its own stage 4. Convolutions have no bias and BatchNorm uses PyTorch's momentum/epsilon, as in the
reference (`finetune/resnetv2.py`, `pretraining/resnetv2.py`).

Architecture versions (`BackboneConfig.arch_version`): 2, the default, is the reference's block — the projection
shortcut is a 1x1 convolution *and a BatchNorm* on the pre-activation, and a strided 3x3 convolution pads one pixel
on every side (PyTorch's padding=1). Version 1 is this package's definition before issue 18 (no shortcut BatchNorm;
Keras "same" padding, which on even sizes pads only bottom/right): exports and runs written before it carry no
version and are rebuilt as version 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import keras

from advss_tf.errors import UsageError
from advss_tf.models.batch_norm import FusedBatchNormalization

# ImageNet statistics, as the reference code normalises CIFAR-10 (SPEC §3): images stay in [0, 1] outside the model.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
BN_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    block: str  # "basic" | "bottleneck" | "wide" (models/wide_resnet.py)
    blocks: tuple[int, ...]  # per stage: 4 stages here, 3 for the WideResNets
    planes: tuple[int, ...]
    stem: int


BACKBONES: dict[str, ArchSpec] = {
    "resnet50v2": ArchSpec("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet18": ArchSpec("basic", (2, 2, 2, 2), (64, 128, 256, 512), 64),
    # Width/depth-reduced for tests and CPU smoke runs: same code path, ~0.2M parameters.
    "tiny": ArchSpec("basic", (1, 1, 1, 1), (16, 32, 64, 128), 16),
    # Half of tiny's widths: the test suite's attack fixture (tests/conftest.py trained_classifier), where the
    # attacks' thousands of forward passes are most of the time; ~0.08M parameters.
    "micro": ArchSpec("basic", (1, 1, 1, 1), (8, 16, 32, 64), 8),
    # WideResNet-d-k (models/wide_resnet.py): (d - 4) / 6 blocks in each of 3 stages of widths 16k, 32k, 64k.
    "wrn28_10": ArchSpec("wide", (4, 4, 4), (160, 320, 640), 16),
    "wrn34_10": ArchSpec("wide", (5, 5, 5), (160, 320, 640), 16),
    "wrn10_2": ArchSpec("wide", (1, 1, 1), (32, 64, 128), 16),  # tests and CPU smoke runs
}
STAGE_STRIDES = (1, 2, 2, 2)
ARCH_VERSION = 2  # what new models are built with: the reference's block
LEGACY_ARCH_VERSION = 1  # what an export or config.json without a version was written with
ARCH_VERSIONS = (LEGACY_ARCH_VERSION, ARCH_VERSION)


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Which backbone, whether BatchNorm statistics are synchronised across replicas, and the block definition
    (`arch_version`: 2 the reference's, 1 the pre-issue-18 one; see the module docstring)."""

    name: str = "resnet18"
    sync_bn: bool = False
    arch_version: int = ARCH_VERSION
    # BN + ReLU after the stem convolution. False only for the reference's *ensemble* trunk
    # (pretraining/model_ensemble.py: conv1 straight into layer1), which `import_torch` brings in as it was.
    stem_norm: bool = True

    def __post_init__(self):
        if self.name not in BACKBONES:
            raise UsageError(f"unknown backbone {self.name!r}; valid: {', '.join(BACKBONES)}")
        if self.arch_version not in ARCH_VERSIONS:
            raise UsageError(
                f"unknown architecture version {self.arch_version!r}; valid: {', '.join(map(str, ARCH_VERSIONS))}"
            )

    @classmethod
    def from_dict(cls, d: dict, sync_bn: bool | None = None) -> BackboneConfig:
        """The config an export's or config.json's `backbone` entry describes; no `arch_version` there means 1."""
        return cls(
            d["name"],
            bool(d.get("sync_bn", False)) if sync_bn is None else sync_bn,
            int(d.get("arch_version", LEGACY_ARCH_VERSION)),
            bool(d.get("stem_norm", True)),
        )

    @property
    def spec(self) -> ArchSpec:
        return BACKBONES[self.name]

    def stage_channels(self, stage: int) -> int:
        """Output channels of stage 1..4 (1..3 for a WideResNet)."""
        expansion = 4 if self.spec.block == "bottleneck" else 1
        return self.spec.planes[stage - 1] * expansion

    @property
    def trunk_channels(self) -> int:
        return self.stage_channels(len(self.spec.blocks) - 1)  # the trunk: every stage but the last

    @property
    def feature_dim(self) -> int:
        return self.stage_channels(len(self.spec.blocks))


@keras.saving.register_keras_serializable(package="advss_tf")
class ImageNormalization(keras.layers.Layer):
    """(x - mean) / std per channel, inside the model so attacks work in [0, 1] pixel space."""

    def __init__(self, mean=MEAN, std=STD, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def call(self, x):
        mean = keras.ops.cast(keras.ops.convert_to_tensor(self.mean), x.dtype)
        std = keras.ops.cast(keras.ops.convert_to_tensor(self.std), x.dtype)
        return (x - mean) / std

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


# Which BatchNormalization class the builders below use. Both have the same weights, numerics and checkpoint keys;
# "keras" (Keras' own, unfused) is kept selectable as the reference the fused layer is tested and timed against,
# and is what a model that differentiates through its gradients prefers (the ensemble: `preferred_batch_norm_layer`).
BATCH_NORM_LAYERS = {"fused": FusedBatchNormalization, "keras": keras.layers.BatchNormalization}
AUTO = "auto"  # no override: each model's preferred layer
_batch_norm_layer: str | None = None  # chosen by `batch_norm_layer` (tests, benchmarks); None: the preferred one
_preferred_layer = "fused"


@contextlib.contextmanager
def batch_norm_layer(name: str) -> Iterator[None]:
    """Models built inside the context use BATCH_NORM_LAYERS[name] (tests and benchmarks of either path); AUTO
    leaves each model its preferred layer."""
    global _batch_norm_layer
    if name not in BATCH_NORM_LAYERS and name != AUTO:
        raise UsageError(f"unknown batch-norm layer {name!r}; valid: {', '.join([*BATCH_NORM_LAYERS, AUTO])}")
    previous, _batch_norm_layer = _batch_norm_layer, (None if name == AUTO else name)
    try:
        yield
    finally:
        _batch_norm_layer = previous


@contextlib.contextmanager
def preferred_batch_norm_layer(name: str) -> Iterator[None]:
    """Models built inside use BATCH_NORM_LAYERS[name] unless a caller chose one with `batch_norm_layer`.

    The ensemble prefers Keras' layer: its step differentiates through input gradients (the diversity term's
    double backprop), and TensorFlow's gradient of the fused kernel's gradient keeps more tensors — measured,
    ResNet-18 at batch 128: 17.7 GiB peak with the fused layer vs 13.9 GiB with Keras', at the same speed
    (docs/benchmarks.md).
    """
    global _preferred_layer
    if name not in BATCH_NORM_LAYERS:
        raise UsageError(f"unknown batch-norm layer {name!r}; valid: {', '.join(BATCH_NORM_LAYERS)}")
    previous, _preferred_layer = _preferred_layer, name
    try:
        yield
    finally:
        _preferred_layer = previous


def _bn(sync: bool, name: str) -> keras.layers.BatchNormalization:
    layer = BATCH_NORM_LAYERS[_batch_norm_layer or _preferred_layer]
    return layer(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=sync, name=name)


def _conv(x, filters: int, kernel: int, stride: int, name: str, arch_version: int = ARCH_VERSION):
    """A bias-free convolution of `x` that keeps the size at stride 1 and halves it (rounding up) at stride 2.

    Version 2 pads a strided 3x3 convolution by one pixel on every side, as PyTorch's padding=1 (an explicit
    ZeroPadding2D, then "valid"); Keras' "same" would pad only bottom/right on even sizes and sample the grid
    shifted by one pixel. At stride 1, and for 1x1 kernels, "same" already is the symmetric padding.
    """
    explicit = arch_version >= 2 and stride != 1 and kernel > 1
    if explicit:
        x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="valid" if explicit else "same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )(x)


def _block(x, kind: str, planes: int, stride: int, sync: bool, name: str, arch_version: int = ARCH_VERSION):
    """One pre-activation block: pre = relu(bn(x)); the projection shortcut (if any) starts from `pre` and is a
    1x1 convolution followed (version 2, as the reference) by a BatchNorm."""
    out_channels = planes * (4 if kind == "bottleneck" else 1)
    v = arch_version
    pre = keras.layers.ReLU(name=f"{name}_pre_relu")(_bn(sync, f"{name}_pre_bn")(x))
    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = _conv(pre, out_channels, 1, stride, f"{name}_shortcut", v)
        if v >= 2:
            shortcut = _bn(sync, f"{name}_shortcut_bn")(shortcut)
    else:
        shortcut = x
    if kind == "basic":
        h = _conv(pre, planes, 3, stride, f"{name}_conv1", v)
        h = keras.layers.ReLU(name=f"{name}_relu2")(_bn(sync, f"{name}_bn2")(h))
        h = _conv(h, planes, 3, 1, f"{name}_conv2", v)
    else:
        h = _conv(pre, planes, 1, 1, f"{name}_conv1", v)
        h = keras.layers.ReLU(name=f"{name}_relu2")(_bn(sync, f"{name}_bn2")(h))
        h = _conv(h, planes, 3, stride, f"{name}_conv2", v)
        h = keras.layers.ReLU(name=f"{name}_relu3")(_bn(sync, f"{name}_bn3")(h))
        h = _conv(h, out_channels, 1, 1, f"{name}_conv3", v)
    return keras.layers.Add(name=f"{name}_add")([h, shortcut])


def _stage(x, cfg: BackboneConfig, stage: int):
    spec = cfg.spec
    for i in range(spec.blocks[stage - 1]):
        stride = STAGE_STRIDES[stage - 1] if i == 0 else 1
        name = f"stage{stage}_block{i + 1}"
        x = _block(x, spec.block, spec.planes[stage - 1], stride, cfg.sync_bn, name, cfg.arch_version)
    return x


def build_trunk(cfg: BackboneConfig, name: str = "trunk") -> keras.Model:
    """Normalisation + stem + stages 1-3: images [N, H, W, 3] in [0, 1] → feature map [N, H/4, W/4, C3].

    Spatial size is left open so Selfie can encode 8x8 patches with the same weights.
    """
    if cfg.spec.block == "wide":  # a WideResNet's own trunk (that module imports this one: import here)
        from advss_tf.models import wide_resnet

        return wide_resnet.build_trunk(cfg, name)
    images = keras.Input((None, None, 3), name="images")
    x = ImageNormalization(name="normalize")(images)
    x = _conv(x, cfg.spec.stem, 3, 1, "stem_conv", cfg.arch_version)
    if cfg.stem_norm:
        x = keras.layers.ReLU(name="stem_relu")(_bn(cfg.sync_bn, "stem_bn")(x))
    for stage in (1, 2, 3):
        x = _stage(x, cfg, stage)
    return keras.Model(images, x, name=name)


def build_stage4(cfg: BackboneConfig, name: str = "stage4") -> keras.Model:
    """Stage 4 alone: trunk feature map → [N, H/8, W/8, C4]. No BN/ReLU after it (as the reference)."""
    if cfg.spec.block == "wide":
        from advss_tf.models import wide_resnet

        return wide_resnet.build_stage4(cfg, name)
    features = keras.Input((None, None, cfg.trunk_channels), name="trunk_features")
    return keras.Model(features, _stage(features, cfg, 4), name=name)
