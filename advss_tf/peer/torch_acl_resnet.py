"""ACL's multi-BN ResNet and projection head (VITA-Group/Adversarial-Contrastive-Learning `models/resnet_multi_bn.py`
at 399eabd) in PyTorch, written from their code, and the map between its state dict and models/post_resnet.py.

    net = torch_acl_resnet.build_torch_acl_resnet18()        # ACL's resnet18(bn_names=['normal', 'pgd']) + proj_head
    net(images_nchw, "pgd")                                   # ACL's forward(x, bn_name)
    torch_acl_resnet.copy_torch_weights(net, keras_model)     # every tensor of the state dict into the Keras model

The modules carry ACL's names, so `net.state_dict()` has the keys of their released checkpoints (`conv1.weight`,
`layer2.0.downsample.bn.bn_list.1.running_var`, `fc.fc3.weight`, `normalize.mean`, ...); `bn_list.0` is the route
ACL calls 'normal' (clean here), `bn_list.1` 'pgd' (adversarial). Only the forward pass of ResNet-18 with the
projection head is reproduced (no Bottleneck, dilation or groups, which ACL's ResNet-18 does not use).

PyTorch is imported by this module only.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from advss_tf.models import post_resnet
from advss_tf.models.layers import MEAN, STD

BN_NAMES = ("normal", "pgd")  # ACL train_simCLR.py:63
ROUTE_OF = dict(zip(BN_NAMES, post_resnet.ROUTES, strict=True))  # ACL's bn_name → the Keras model's route


class BatchNormMultiple(nn.Module):
    """ACL's `batch_norm_multiple`: one BatchNorm per bn_name in `bn_list`, chosen by name per call."""

    def __init__(self, norm, channels: int, bn_names=BN_NAMES):
        super().__init__()
        self.bn_list = nn.ModuleList([norm(channels) for _ in bn_names])
        self.index = {name: i for i, name in enumerate(bn_names)}

    def forward(self, x: torch.Tensor, bn_name: str) -> torch.Tensor:
        return self.bn_list[self.index[bn_name]](x)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class DownsampleMultiple(nn.Module):
    """ACL's `Downsample_multiple`: 1x1 conv(stride) + multi-BN."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)
        self.bn = BatchNormMultiple(nn.BatchNorm2d, cout)

    def forward(self, x: torch.Tensor, bn_name: str) -> torch.Tensor:
        return self.bn(self.conv(x), bn_name)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock with ACL's multi-BN."""

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: DownsampleMultiple | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = BatchNormMultiple(nn.BatchNorm2d, planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = BatchNormMultiple(nn.BatchNorm2d, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, bn_name: str) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x), bn_name))
        out = self.bn2(self.conv2(out), bn_name)
        identity = self.downsample(x, bn_name) if self.downsample is not None else x
        return torch.relu(out + identity)


class ProjHead(nn.Module):
    """ACL's `proj_head` (three layers: twoLayerProj=False, their default)."""

    def __init__(self, ch: int):
        super().__init__()
        self.in_features = ch
        self.fc1 = nn.Linear(ch, ch)
        self.bn1 = BatchNormMultiple(nn.BatchNorm1d, ch)
        self.fc2 = nn.Linear(ch, ch, bias=False)
        self.bn2 = BatchNormMultiple(nn.BatchNorm1d, ch)
        self.fc3 = nn.Linear(ch, ch, bias=False)
        self.bn3 = BatchNormMultiple(nn.BatchNorm1d, ch)

    def forward(self, x: torch.Tensor, bn_name: str) -> torch.Tensor:
        x = torch.relu(self.bn1(self.fc1(x), bn_name))
        x = torch.relu(self.bn2(self.fc2(x), bn_name))
        return self.bn3(self.fc3(x), bn_name)


class NormalizeByChannelMeanStd(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]


class AclResNet(nn.Module):
    """ACL's `ResNet` (3x3 stride-1 stem, no max-pool) with `fc = proj_head(512)`: NCHW images in [0, 1] → the
    projection, through the BatchNorms of `bn_name`; `return_features` stops at the pooled features."""

    def __init__(self, blocks=(2, 2, 2, 2), planes=(64, 128, 256, 512), stem: int = 64):
        super().__init__()
        self.normalize = NormalizeByChannelMeanStd(list(MEAN), list(STD))
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = BatchNormMultiple(nn.BatchNorm2d, stem)
        cin = stem
        for s, (n, width, stride) in enumerate(zip(blocks, planes, post_resnet.STAGE_STRIDES, strict=True), start=1):
            layers = []
            for i in range(n):
                step = stride if i == 0 else 1
                down = DownsampleMultiple(cin, width, step) if step != 1 or cin != width else None
                layers.append(BasicBlock(cin, width, step, down))
                cin = width
            setattr(self, f"layer{s}", nn.ModuleList(layers))
        self.fc = ProjHead(cin)
        for m in self.modules():  # ACL resnet_multi_bn.py:262-267 (run before fc is replaced: Linear keeps its own)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, bn_name: str, return_features: bool = False) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(self.normalize(x)), bn_name))
        for s in range(1, 5):
            for block in getattr(self, f"layer{s}"):
                x = block(x, bn_name)
        x = torch.flatten(x.mean(dim=(2, 3)), 1)
        return x if return_features else self.fc(x, bn_name)


def build_torch_acl_resnet18() -> AclResNet:
    """ACL's `resnet18(bn_names=['normal', 'pgd'])` with `fc = proj_head(512, bn_names)` (train_simCLR.py:66-69)."""
    return AclResNet(**post_resnet.RESNET18)


def keras_to_acl_names(model: post_resnet.DualBNResNet) -> dict[str, str]:
    """Each Keras variable's path → the state-dict key of ACL's checkpoint that holds it (BatchNorm `num_batches
    _tracked` and the normalisation's mean/std buffers have no Keras variable)."""
    names: dict[str, str] = {}

    def add(layer, prefix: str) -> None:
        if isinstance(layer, post_resnet.DualBatchNormalization):
            for i, norm in enumerate(layer.norms):
                for var, key in (
                    (norm.gamma, "weight"),
                    (norm.beta, "bias"),
                    (norm.moving_mean, "running_mean"),
                    (norm.moving_variance, "running_var"),
                ):
                    names[var.path] = f"{prefix}.bn_list.{i}.{key}"
        else:
            names[layer.kernel.path] = f"{prefix}.weight"
            if getattr(layer, "bias", None) is not None:
                names[layer.bias.path] = f"{prefix}.bias"

    for name, layer in post_resnet.acl_module_names(model):
        add(layer, name)
    return names


def copy_torch_weights(net: AclResNet, model: post_resnet.DualBNResNet) -> None:
    """Copies every weight and BatchNorm statistic of ACL's network (both routes) into the Keras model.

    Raises:
      ValueError: a Keras variable has no tensor in the state dict, a tensor of it is left unused, or a shape differs.
    """
    state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    names = keras_to_acl_names(model)
    unused = set(state) - set(names.values()) - {"normalize.mean", "normalize.std"}
    unused = {k for k in unused if not k.endswith("num_batches_tracked")}
    missing = sorted(set(names.values()) - set(state))
    if unused or missing:
        raise ValueError(f"the networks differ: unused torch tensors {sorted(unused)}, missing {missing}")
    for key, expected in (("normalize.mean", MEAN), ("normalize.std", STD)):
        if not np.allclose(state[key], expected, rtol=0, atol=1e-6):
            raise ValueError(f"{key} is {state[key].tolist()}, the Keras model normalises with {list(expected)}")
    for var in model.weights:
        value = state[names[var.path]]
        if value.ndim == 4:
            value = np.transpose(value, (2, 3, 1, 0))  # OIHW → HWIO
        elif value.ndim == 2:
            value = value.T  # Linear [out, in] → Dense [in, out]
        if tuple(var.shape) != value.shape:
            raise ValueError(f"shape mismatch at {var.path}: keras {tuple(var.shape)} vs torch {value.shape}")
        var.assign(value)


def move_batch_norms(net: nn.Module, seed: int = 0) -> nn.Module:
    """Moves every BatchNorm's scale, shift and running statistics off their initial 1 / 0 / 0 / 1, differently per
    route (seeded), so that a comparison of two networks' outputs tells the routes apart; returns `net`."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
    return net


def parameter_count(net: nn.Module) -> int:
    """Parameters + BatchNorm running mean/variance: what Keras' `count_params()` counts for the same model."""
    stats = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in net.modules()
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)
    )
    return sum(p.numel() for p in net.parameters()) + stats


__all__ = [
    "AclResNet",
    "build_torch_acl_resnet18",
    "copy_torch_weights",
    "keras_to_acl_names",
    "move_batch_norms",
    "parameter_count",
]
