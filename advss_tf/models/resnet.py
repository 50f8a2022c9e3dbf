"""Pre-activation ResNets for 32x32 images, split into the shared trunk (stem + stages 1-3) and stage 4.

The split is the paper's: the trunk is the part every pretext head and the classifier share (θp); each head that
needs one owns its own stage 4. Convolutions have no bias and BatchNorm uses PyTorch's momentum/epsilon, as in the
reference (`finetune/resnetv2.py`, `pretraining/resnetv2.py`).

Architecture versions (`arch_version`, recorded as `BackboneConfig.arch_version`): 2, what new models are built
with, is the reference's block — the projection shortcut is a 1x1 convolution *and a BatchNorm* on the
pre-activation, and a strided 3x3 convolution pads one pixel on every side (PyTorch's padding=1). Version 1 is this
package's definition before issue 18 (no shortcut BatchNorm; Keras "same" padding, which on even sizes pads only
bottom/right): exports and runs written before it carry no version and are rebuilt as version 1.

A family of models/backbones.py: built from an `ArchSpec` and explicit arguments; imports only models/layers.py.
"""

from __future__ import annotations

import keras

from advss_tf.models.layers import ArchSpec, ImageNormalization, batch_norm

STAGE_STRIDES = (1, 2, 2, 2)


def stage_channels(spec: ArchSpec, stage: int) -> int:
    """Output channels of stage 1..4."""
    return spec.planes[stage - 1] * (4 if spec.block == "bottleneck" else 1)


def _conv(x, filters: int, kernel: int, stride: int, name: str, arch_version: int):
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


def _block(x, kind: str, planes: int, stride: int, sync: bool, name: str, arch_version: int):
    """One pre-activation block: pre = relu(bn(x)); the projection shortcut (if any) starts from `pre` and is a
    1x1 convolution followed (version 2, as the reference) by a BatchNorm."""
    out_channels = planes * (4 if kind == "bottleneck" else 1)
    v = arch_version
    pre = keras.layers.ReLU(name=f"{name}_pre_relu")(batch_norm(sync, f"{name}_pre_bn")(x))
    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = _conv(pre, out_channels, 1, stride, f"{name}_shortcut", v)
        if v >= 2:
            shortcut = batch_norm(sync, f"{name}_shortcut_bn")(shortcut)
    else:
        shortcut = x
    if kind == "basic":
        h = _conv(pre, planes, 3, stride, f"{name}_conv1", v)
        h = keras.layers.ReLU(name=f"{name}_relu2")(batch_norm(sync, f"{name}_bn2")(h))
        h = _conv(h, planes, 3, 1, f"{name}_conv2", v)
    else:
        h = _conv(pre, planes, 1, 1, f"{name}_conv1", v)
        h = keras.layers.ReLU(name=f"{name}_relu2")(batch_norm(sync, f"{name}_bn2")(h))
        h = _conv(h, planes, 3, stride, f"{name}_conv2", v)
        h = keras.layers.ReLU(name=f"{name}_relu3")(batch_norm(sync, f"{name}_bn3")(h))
        h = _conv(h, out_channels, 1, 1, f"{name}_conv3", v)
    return keras.layers.Add(name=f"{name}_add")([h, shortcut])


def _stage(x, spec: ArchSpec, stage: int, sync_bn: bool, arch_version: int):
    for i in range(spec.blocks[stage - 1]):
        stride = STAGE_STRIDES[stage - 1] if i == 0 else 1
        name = f"stage{stage}_block{i + 1}"
        x = _block(x, spec.block, spec.planes[stage - 1], stride, sync_bn, name, arch_version)
    return x


def build_trunk(
    spec: ArchSpec, *, sync_bn: bool, arch_version: int, stem_norm: bool = True, name: str = "trunk"
) -> keras.Model:
    """Normalisation + stem + stages 1-3: images [N, H, W, 3] in [0, 1] → feature map [N, H/4, W/4, C3].

    Spatial size is left open so Selfie can encode 8x8 patches with the same weights. `stem_norm`: BN + ReLU after
    the stem convolution (False only for the reference's ensemble trunk, see `BackboneConfig.stem_norm`).
    """
    images = keras.Input((None, None, 3), name="images")
    x = ImageNormalization(name="normalize")(images)
    x = _conv(x, spec.stem, 3, 1, "stem_conv", arch_version)
    if stem_norm:
        x = keras.layers.ReLU(name="stem_relu")(batch_norm(sync_bn, "stem_bn")(x))
    for stage in (1, 2, 3):
        x = _stage(x, spec, stage, sync_bn, arch_version)
    return keras.Model(images, x, name=name)


def build_stage4(spec: ArchSpec, *, sync_bn: bool, arch_version: int, name: str = "stage4") -> keras.Model:
    """Stage 4 alone: trunk feature map → [N, H/8, W/8, C4]. No BN/ReLU after it (as the reference)."""
    features = keras.Input((None, None, stage_channels(spec, 3)), name="trunk_features")
    return keras.Model(features, _stage(features, spec, 4, sync_bn, arch_version), name=name)
