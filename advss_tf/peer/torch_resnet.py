"""advss_tf's pre-activation ResNets (models/resnet.py + models/classifier.py) in PyTorch, and a weight copy.

    from advss_tf.peer import torch_resnet
    net = torch_resnet.build_torch_classifier(BackboneConfig("resnet18"), 10)
    torch_resnet.copy_keras_weights(keras_classifier, net)   # logits now agree (eval and train mode)
    torch_resnet.parameter_count(net) == keras_classifier.count_params()

The PyTorch model takes NCHW float images in [0, 1] (what torchattacks expects) and normalises inside, as ours.
Layer for layer it is ours, for either architecture version of the config: normalisation, stem conv + BN + ReLU,
stages 1-3 (`trunk`), stage 4 (`stage4`), global average pool, Linear (`head`); convolutions without bias;
BatchNorm with momentum 0.1 / epsilon 1e-5. Version 2 (the default, the reference's block) has the shortcut
BatchNorm and pads every 3x3 convolution by 1 on each side (PyTorch's own padding=1); version 1 has no shortcut
BatchNorm, and its strided convolutions pad as TensorFlow's "same" (only bottom/right on even sizes).

One known difference that does not change logits: PyTorch's BatchNorm moves its running variance with the unbiased
batch variance, Keras with the biased one (a factor n/(n-1) in the update, 1.008 at 128 images of 8x8 at stage 2).

PyTorch is imported by this module only; `import advss_tf` and `import advss_tf.peer` work without it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advss_tf.models import backbones, resnet
from advss_tf.models.layers import BN_EPSILON, BN_MOMENTUM, MEAN, STD

_TORCH_BN_MOMENTUM = 1.0 - BN_MOMENTUM  # PyTorch counts momentum the other way round


def _tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's padding="same" along one axis."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d without bias; symmetric padding kernel // 2, or (`tf_same`) TensorFlow's "same" padding, which is
    asymmetric when strided (architecture version 1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, tf_same: bool = False):
        self._tf_pad = tf_same and stride != 1 and kernel > 1
        super().__init__(
            in_channels, out_channels, kernel, stride=stride, padding=0 if self._tf_pad else kernel // 2, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._tf_pad:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = _tf_same_padding(x.shape[-2], k, s)
            left, right = _tf_same_padding(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=_TORCH_BN_MOMENTUM)


class PreActBlock(nn.Module):
    """One pre-activation block (basic or bottleneck), as `advss_tf.models.resnet._block`."""

    def __init__(
        self, kind: str, in_channels: int, planes: int, stride: int, arch_version: int = backbones.ARCH_VERSION
    ):
        super().__init__()
        self.kind = kind
        tf_same = arch_version < 2
        out_channels = planes * (4 if kind == "bottleneck" else 1)
        self.pre_bn = _bn(in_channels)
        projection = stride != 1 or in_channels != out_channels
        self.shortcut = SameConv2d(in_channels, out_channels, 1, stride, tf_same) if projection else None
        self.shortcut_bn = _bn(out_channels) if projection and not tf_same else None
        if kind == "basic":
            self.conv1 = SameConv2d(in_channels, planes, 3, stride, tf_same)
            self.bn2 = _bn(planes)
            self.conv2 = SameConv2d(planes, planes, 3, 1, tf_same)
        else:
            self.conv1 = SameConv2d(in_channels, planes, 1, 1, tf_same)
            self.bn2 = _bn(planes)
            self.conv2 = SameConv2d(planes, planes, 3, stride, tf_same)
            self.bn3 = _bn(planes)
            self.conv3 = SameConv2d(planes, out_channels, 1, 1, tf_same)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.pre_bn(x))
        shortcut = self.shortcut(pre) if self.shortcut is not None else x
        if self.shortcut_bn is not None:
            shortcut = self.shortcut_bn(shortcut)
        h = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        if self.kind == "bottleneck":
            h = self.conv3(F.relu(self.bn3(h)))
        return h + shortcut


class Normalize(nn.Module):
    """(x - mean) / std per channel (ImageNet statistics), inside the model as ours."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _stage(cfg: backbones.BackboneConfig, stage: int, in_channels: int) -> nn.Sequential:
    spec = cfg.spec
    blocks = []
    for i in range(spec.blocks[stage - 1]):
        stride = resnet.STAGE_STRIDES[stage - 1] if i == 0 else 1
        blocks.append(PreActBlock(spec.block, in_channels, spec.planes[stage - 1], stride, cfg.arch_version))
        in_channels = cfg.stage_channels(stage)
    return nn.Sequential(*blocks)


class TorchClassifier(nn.Module):
    """NCHW images in [0, 1] → logits: `trunk` (normalise, stem, stages 1-3) → `stage4` → mean pool → `head`."""

    def __init__(self, cfg: backbones.BackboneConfig, num_classes: int):
        super().__init__()
        self.backbone = cfg
        stem = cfg.spec.stem
        self.trunk = nn.Sequential(
            Normalize(),
            SameConv2d(3, stem, 3, 1, tf_same=cfg.arch_version < 2),
            _bn(stem),
            nn.ReLU(),
            _stage(cfg, 1, stem),
            _stage(cfg, 2, cfg.stage_channels(1)),
            _stage(cfg, 3, cfg.stage_channels(2)),
        )
        self.stage4 = _stage(cfg, 4, cfg.stage_channels(3))
        self.head = nn.Linear(cfg.feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage4(self.trunk(images)).mean(dim=(2, 3)))


def build_torch_classifier(backbone: backbones.BackboneConfig | str, num_classes: int) -> TorchClassifier:
    """The PyTorch twin of `ImageClassifier(backbone, num_classes)` (PyTorch's own initialisation)."""
    cfg = backbone if isinstance(backbone, backbones.BackboneConfig) else backbones.BackboneConfig(backbone)
    if cfg.spec.block == "wide":
        raise ValueError(f"{cfg.name} is a WideResNet: its twin is advss_tf.peer.torch_wide_resnet")
    if not cfg.stem_norm:
        raise ValueError(
            "the PyTorch twin has the stem BN/ReLU; stem_norm=False (an imported ensemble trunk) is not built"
        )
    return TorchClassifier(cfg, num_classes)


def parameter_count(model: nn.Module) -> int:
    """Parameters + BatchNorm running mean/variance: what Keras' `count_params()` counts for the same model."""
    stats = sum(
        m.running_mean.numel() + m.running_var.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    )
    return sum(p.numel() for p in model.parameters()) + stats


def _keras_layers(keras_model) -> dict:
    """Keras layer name → layer for every layer of the classifier's trunk and stage 4, plus the Dense head."""
    layers = {layer.name: layer for part in (keras_model.trunk, keras_model.stage4) for layer in part.layers}
    layers["head"] = keras_model.head
    return layers


def _torch_layers(model: TorchClassifier) -> dict:
    """The same Keras names → the PyTorch modules that hold those weights."""
    names = {"stem_conv": model.trunk[1], "stem_bn": model.trunk[2], "head": model.head}
    stages = [*model.trunk[4:7], model.stage4]
    for s, stage in enumerate(stages, start=1):
        for i, block in enumerate(stage, start=1):
            for attr in ("pre_bn", "shortcut", "shortcut_bn", "conv1", "bn2", "conv2", "bn3", "conv3"):
                module = getattr(block, attr, None)
                if module is not None:
                    names[f"stage{s}_block{i}_{attr}"] = module
    return names


def _assign(param: torch.Tensor, value: np.ndarray) -> None:
    if tuple(param.shape) != value.shape:
        raise ValueError(f"shape mismatch: torch {tuple(param.shape)} vs keras {value.shape}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def copy_keras_weights(keras_model, model: TorchClassifier) -> None:
    """Copies every weight and BatchNorm statistic of a Keras `ImageClassifier` into its PyTorch twin.

    Raises:
      ValueError: if the two models do not have the same layers with the same shapes.
    """
    copy_weights_by_name(keras_model, _torch_layers(model))


def copy_weights_by_name(keras_model, target: dict[str, nn.Module]) -> None:
    """Copies each weighted layer of a Keras `ImageClassifier` (trunk, stage 4, Dense head) into the module `target`
    maps its Keras name to (BatchNorm2d, Conv2d or Linear).

    Raises:
      ValueError: if the weighted Keras layers are not exactly `target`'s names, or a shape differs.
    """
    source = _keras_layers(keras_model)
    weighted = {name for name, layer in source.items() if layer.weights}
    if weighted != set(target):
        raise ValueError(
            f"layers differ: only keras {sorted(weighted - set(target))}, only torch {sorted(set(target) - weighted)}"
        )
    for name, module in target.items():
        layer = source[name]
        if isinstance(module, nn.BatchNorm2d):
            for param, var in (
                (module.weight, layer.gamma),
                (module.bias, layer.beta),
                (module.running_mean, layer.moving_mean),
                (module.running_var, layer.moving_variance),
            ):
                _assign(param, np.asarray(var.numpy()))
        elif isinstance(module, nn.Conv2d):
            _assign(module.weight, np.transpose(np.asarray(layer.kernel.numpy()), (3, 2, 0, 1)))  # HWIO → OIHW
        else:
            _assign(module.weight, np.asarray(layer.kernel.numpy()).T)
            _assign(module.bias, np.asarray(layer.bias.numpy()))


__all__ = ["TorchClassifier", "build_torch_classifier", "copy_keras_weights", "copy_weights_by_name", "parameter_count"]
