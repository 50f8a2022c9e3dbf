"""The reference's ResNet (`resnetv2.ResNet`) in our backbones: which backbone a file holds, and the slots of its
stages, stem and head in our trunk / stage 4 / head (architecture version 2, the reference's block)."""

from __future__ import annotations

import numpy as np

from advss_tf.errors import UsageError
from advss_tf.importers.slots import Slot, bn_slots, conv_slot, dense_slots
from advss_tf.models.backbones import BACKBONES, BackboneConfig
from advss_tf.models.classifier import ImageClassifier
from advss_tf.models.resnet import STAGE_STRIDES


def infer_backbone(
    state: dict[str, np.ndarray], prefix: str, where: str, stem_key: str | None = None, layers: list[str] | None = None
) -> BackboneConfig:
    """The backbone (architecture version 2) whose reference ResNet has the stem and block shapes of `state`.

    Keys: `<prefix>conv1.weight` and `<prefix>layer<s>.<i>.…` (the ResNet's own), or `stem_key` and the four
    `layers` prefixes (the ensemble's `blocks.0.weight`, `blocks.1` … `layer4_rotation`).
    """
    stem_key = stem_key or f"{prefix}conv1.weight"
    layers = layers or [f"{prefix}layer{s}" for s in (1, 2, 3, 4)]
    stem = state.get(stem_key)
    if stem is None:
        raise UsageError(f"{where}: 1 missing: {stem_key} (no reference ResNet stem)")
    bottleneck = f"{layers[0]}.0.conv3.weight" in state
    blocks = tuple(
        len({k[len(layer) + 1 :].split(".")[0] for k in state if k.startswith(f"{layer}.")}) for layer in layers
    )
    for name, spec in BACKBONES.items():
        if spec.family != "resnet":  # the reference's ResNets are pre-activation ones
            continue
        if spec.stem == stem.shape[0] and (spec.block == "bottleneck") == bottleneck and blocks[:3] == spec.blocks[:3]:
            if blocks[3] in (0, spec.blocks[3]):
                return BackboneConfig(name)
    shapes = ", ".join(
        f"{n} (stem {s.stem}, {s.block} {list(s.blocks)})" for n, s in BACKBONES.items() if s.family == "resnet"
    )
    raise UsageError(
        f"{where}: a ResNet with stem {stem.shape[0]}, {'bottleneck' if bottleneck else 'basic'} blocks "
        f"{[b for b in blocks if b]} is none of advss_tf's backbones: {shapes}"
    )


def stage_slots(cfg: BackboneConfig, part, stage: int, theirs: str) -> dict[str, Slot]:
    """The reference's `layer<stage>` (its keys under `theirs`, e.g. `1.layer2` or `blocks.2`) → the blocks
    `stage<stage>_block<i>_*` of our Keras model `part` (the trunk for stages 1-3, a stage 4)."""
    spec = cfg.spec
    in_channels = spec.stem if stage == 1 else cfg.stage_channels(stage - 1)
    slots = {}
    for i in range(spec.blocks[stage - 1]):
        ours = f"stage{stage}_block{i + 1}"
        names = {"bn0": "pre_bn", "conv1": "conv1", "bn1": "bn2", "conv2": "conv2"}
        if spec.block == "bottleneck":
            names.update(bn2="bn3", conv3="conv3")
        stride = STAGE_STRIDES[stage - 1] if i == 0 else 1
        if stride != 1 or in_channels != cfg.stage_channels(stage):
            names.update({"shortcut.0": "shortcut", "shortcut.1": "shortcut_bn"})
        for t_name, k_name in names.items():
            layer = part.get_layer(f"{ours}_{k_name}")
            if "bn" in k_name:
                slots.update(bn_slots(f"{theirs}.{i}.{t_name}", layer))
            else:
                slots[f"{theirs}.{i}.{t_name}.weight"] = conv_slot(layer)
        in_channels = cfg.stage_channels(stage)
    return slots


def resnet_slots(model: ImageClassifier, prefix: str = "", stages: int = 4, head: bool = True) -> dict[str, Slot]:
    """`resnetv2.ResNet`'s state_dict keys (under `prefix`) → our classifier's variables (`stages=3`, no head: `P`)."""
    cfg = model.backbone
    slots = {f"{prefix}conv1.weight": conv_slot(model.trunk.get_layer("stem_conv"))}
    slots.update(bn_slots(f"{prefix}bn1", model.trunk.get_layer("stem_bn")))
    for s in range(1, stages + 1):
        slots.update(stage_slots(cfg, model.trunk if s <= 3 else model.stage4, s, f"{prefix}layer{s}"))
    if head:
        slots.update(dense_slots(f"{prefix}linear", model.head))
    return slots
