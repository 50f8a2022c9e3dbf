"""advss_tf's WideResNets (models/wide_resnet.py + models/classifier.py) in PyTorch, and a weight copy.

    from advss_tf.peer import torch_wide_resnet
    net = torch_wide_resnet.build_torch_classifier(BackboneConfig("wrn28_10"), 10)
    torch_wide_resnet.copy_keras_weights(keras_classifier, net)   # logits now agree (eval and train mode)
    torch_resnet.parameter_count(net) == keras_classifier.count_params()

The same network as RobustBench's `WideResNet` (pre-activation basic blocks, a 1x1 `convShortcut` of the
pre-activation without BatchNorm, `padding=1` everywhere, final BN + ReLU, dropout 0, their initialisation), with
advss_tf's split and normalisation: `trunk` (ImageNet mean/std, stem conv, stages 1-2), `stage4` (stage 3, BN,
ReLU), mean pool, Linear `head`. It takes NCHW float images in [0, 1]. Plain `nn.Conv2d(padding=1)` is exact here:
the Keras model pads its strided 3x3 convs by 1 on every side too.

PyTorch is imported by this module only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from advss_tf.models import backbones, wide_resnet
from advss_tf.models.layers import ArchSpec
from advss_tf.peer import torch_resnet


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)


class WideBlock(nn.Module):
    """One pre-activation basic block, as `advss_tf.models.wide_resnet._block`."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.pre_bn = torch_resnet._bn(in_channels)
        projection = stride != 1 or in_channels != channels
        self.shortcut = _conv(in_channels, channels, 1, stride) if projection else None
        self.conv1 = _conv(in_channels, channels, 3, stride)
        self.bn2 = torch_resnet._bn(channels)
        self.conv2 = _conv(channels, channels, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.pre_bn(x))
        shortcut = self.shortcut(pre) if self.shortcut is not None else x
        return self.conv2(F.relu(self.bn2(self.conv1(pre)))) + shortcut


def _stage(spec: ArchSpec, stage: int, in_channels: int) -> nn.Sequential:
    blocks = []
    for i in range(spec.blocks[stage - 1]):
        stride = wide_resnet.STAGE_STRIDES[stage - 1] if i == 0 else 1
        blocks.append(WideBlock(in_channels, spec.planes[stage - 1], stride))
        in_channels = spec.planes[stage - 1]
    return nn.Sequential(*blocks)


class TorchWideClassifier(nn.Module):
    """NCHW images in [0, 1] → logits: `trunk` (normalise, stem, stages 1-2) → `stage4` (stage 3, BN, ReLU) → mean
    pool → `head`."""

    def __init__(self, cfg: backbones.BackboneConfig, num_classes: int):
        super().__init__()
        spec = cfg.spec
        if spec.block != wide_resnet.BLOCK:
            raise ValueError(f"backbone {cfg.name!r} is not a WideResNet (its twin is advss_tf.peer.torch_resnet)")
        self.backbone = cfg
        self.trunk = nn.Sequential(
            torch_resnet.Normalize(),
            _conv(3, spec.stem, 3, 1),
            _stage(spec, 1, spec.stem),
            _stage(spec, 2, spec.planes[0]),
        )
        self.stage4 = nn.Sequential(_stage(spec, 3, spec.planes[1]), torch_resnet._bn(spec.planes[2]), nn.ReLU())
        self.head = nn.Linear(cfg.feature_dim, num_classes)
        # RobustBench's (the TRADES code's) initialisation: conv N(0, 2 / (k·k·out)), BN 1/0, Linear bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage4(self.trunk(images)).mean(dim=(2, 3)))


def build_torch_classifier(backbone: backbones.BackboneConfig | str, num_classes: int) -> TorchWideClassifier:
    """The PyTorch twin of `ImageClassifier(backbone, num_classes)` for a WideResNet backbone.

    Raises:
      ValueError: the backbone is not a WideResNet.
    """
    cfg = backbone if isinstance(backbone, backbones.BackboneConfig) else backbones.BackboneConfig(backbone)
    return TorchWideClassifier(cfg, num_classes)


def _torch_layers(model: TorchWideClassifier) -> dict[str, nn.Module]:
    """Keras layer names → the PyTorch modules that hold those weights."""
    names = {"stem_conv": model.trunk[1], "final_bn": model.stage4[1], "head": model.head}
    for s, stage in enumerate([model.trunk[2], model.trunk[3], model.stage4[0]], start=1):
        for i, block in enumerate(stage, start=1):
            for attr in ("pre_bn", "shortcut", "conv1", "bn2", "conv2"):
                module = getattr(block, attr)
                if module is not None:
                    names[f"stage{s}_block{i}_{attr}"] = module
    return names


def copy_keras_weights(keras_model, model: TorchWideClassifier) -> None:
    """Copies every weight and BatchNorm statistic of a Keras WideResNet `ImageClassifier` into its PyTorch twin.

    Raises:
      ValueError: if the two models do not have the same layers with the same shapes.
    """
    torch_resnet.copy_weights_by_name(keras_model, _torch_layers(model))


parameter_count = torch_resnet.parameter_count

__all__ = ["TorchWideClassifier", "build_torch_classifier", "copy_keras_weights", "parameter_count"]
