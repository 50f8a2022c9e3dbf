"""Pre-activation WideResNets for 32x32 images, as the robustness literature trains them (WRN-28-10, WRN-34-10).

WRN-d-k (Zagoruyko & Komodakis; the layout of RobustBench's model zoo and the TRADES code): a 3x3 stem conv to 16
channels with no BN/ReLU after it (the first block's pre-activation does that), three stages of n = (d - 4) / 6
pre-activation basic blocks of 16k, 32k and 64k channels at strides 1, 2, 2, then BN + ReLU, global average pool and
a Dense layer. A block is BN → ReLU → 3x3 conv (stride) → BN → ReLU → 3x3 conv, added to its shortcut: the identity,
or — where the width or the stride changes — a 1x1 conv (stride) of the block's pre-activation, without BatchNorm
(RobustBench's `convShortcut`). Dropout 0, so none is built. Strided 3x3 convs pad 1 on every side (PyTorch's
`padding=1`; Keras' "same" would pad only bottom/right), and convolutions start from N(0, 2 / (k·k·out channels))
as theirs. As the ResNets: no conv bias, PyTorch's BatchNorm momentum/epsilon, and the normalisation (ImageNet
mean/std) inside the model, so images are in [0, 1].

The trunk / stage-4 split (docs/architecture.md, "Backbones"): a WRN has three stages where the ResNets have four,
and the split keeps its meaning — every stage but the last is the trunk that all heads share (θp), the last stage is
what each head owns. The part is still called `stage4` (that is its role in every task, checkpoint and export):

    trunk  = normalisation + stem + stages 1-2   [N, H, W, 3] → [N, H/2, W/2, 32k]
    stage4 = stage 3 + the final BN + ReLU                    → [N, H/4, W/4, 64k]

Layers keep the WRN's own stage numbers (`stage3_block1_conv1` lives in the part `stage4`).

A family of models/backbones.py: built from an `ArchSpec` and explicit arguments; imports only models/layers.py.
"""

from __future__ import annotations

import keras

from advss_tf.models.layers import ArchSpec, ImageNormalization, batch_norm, fan_out_conv

BLOCK = "wide"  # ArchSpec.block of the WideResNets in models/backbones.BACKBONES
STAGE_STRIDES = (1, 2, 2)


def _conv3x3(x, filters: int, stride: int, name: str):
    """3x3 conv padded by 1 on every side: "same" does that at stride 1; strided, pad explicitly then "valid"."""
    if stride != 1:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return fan_out_conv(filters, 3, stride, name)(x)


def _block(x, channels: int, stride: int, sync: bool, name: str):
    """One pre-activation basic block; the 1x1 shortcut (if any) starts from the pre-activation, as `convShortcut`."""
    pre = keras.layers.ReLU(name=f"{name}_pre_relu")(batch_norm(sync, f"{name}_pre_bn")(x))
    if stride != 1 or x.shape[-1] != channels:
        shortcut = fan_out_conv(channels, 1, stride, f"{name}_shortcut")(pre)
    else:
        shortcut = x
    h = _conv3x3(pre, channels, stride, f"{name}_conv1")
    h = keras.layers.ReLU(name=f"{name}_relu2")(batch_norm(sync, f"{name}_bn2")(h))
    h = _conv3x3(h, channels, 1, f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([h, shortcut])


def _stage(x, spec: ArchSpec, stage: int, sync_bn: bool):
    for i in range(spec.blocks[stage - 1]):
        stride = STAGE_STRIDES[stage - 1] if i == 0 else 1
        x = _block(x, spec.planes[stage - 1], stride, sync_bn, name=f"stage{stage}_block{i + 1}")
    return x


def _check(spec: ArchSpec) -> None:
    if spec.block != BLOCK or len(spec.blocks) != len(STAGE_STRIDES):
        raise ValueError(f"{spec} is not a WideResNet")


def stage_channels(spec: ArchSpec, stage: int) -> int:
    """Output channels of stage 1..3."""
    return spec.planes[stage - 1]


def build_trunk(spec: ArchSpec, *, sync_bn: bool, name: str = "trunk") -> keras.Model:
    """Normalisation + stem conv + stages 1-2: images [N, H, W, 3] in [0, 1] → [N, H/2, W/2, 32k].

    Spatial size is left open so Selfie can encode 8x8 patches with the same weights (→ 4x4 maps).
    """
    _check(spec)
    images = keras.Input((None, None, 3), name="images")
    x = ImageNormalization(name="normalize")(images)
    x = fan_out_conv(spec.stem, 3, 1, "stem_conv")(x)  # no BN/ReLU here: stage 1's first pre-activation is that
    for stage in range(1, len(STAGE_STRIDES)):
        x = _stage(x, spec, stage, sync_bn)
    return keras.Model(images, x, name=name)


def build_stage4(spec: ArchSpec, *, sync_bn: bool, name: str = "stage4") -> keras.Model:
    """The part each head owns: stage 3 + the final BN + ReLU, trunk features → [N, H/4, W/4, 64k]."""
    _check(spec)
    last = len(STAGE_STRIDES)
    features = keras.Input((None, None, stage_channels(spec, last - 1)), name="trunk_features")
    x = _stage(features, spec, last, sync_bn)
    x = keras.layers.ReLU(name="final_relu")(batch_norm(sync_bn, "final_bn")(x))
    return keras.Model(features, x, name=name)
