"""PyTorch twins of the reference code's models (Adv-SS-Pretraining), with the reference's parameter names.

Written from reading the reference (`finetune/resnetv2.py`, `pretraining/resnetv2.py`, `pretraining/attention_pooling/`,
`pretraining/model_ensemble.py`, `finetune/model_ensemble.py`, RobustBench's `Chen2020AdversarialNet`), not copied:
their `state_dict()` keys and shapes are the reference's, so a twin with random weights saved in a training script's
checkpoint layout is what that script would have written. Widths and depths are arguments (the reference hard-codes
ResNet-50v2), so tests run the same code at tiny sizes. The importer's tests compare our imported SavedModels with
these twins' outputs.

    net = with_normalizer(ReferenceResNet("bottleneck", (3, 4, 6, 3), num_classes=10))   # finetune/main.py's model
    torch.save({"epoch": 1, "state_dict": net.state_dict(), "best_prec1": 0.0}, "model.pt")

PyTorch is imported by this module only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what every reference script normalises with
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGE_STRIDES = (1, 2, 2, 2)


class Normalizer(nn.Module):
    """advertorch's NormalizeByChannelMeanStd as the reference uses it: buffers `mean` and `std` of shape [3]."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]


def with_normalizer(model: nn.Module) -> nn.Sequential:
    """nn.Sequential(normaliser, model): keys `0.mean`, `0.std`, `1.<model's keys>`, as every training script."""
    return nn.Sequential(Normalizer(), model)


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ReferenceBlock(nn.Module):
    """The reference's pre-activation BasicBlock / Bottleneck: bn0 → relu = pre; conv1, bn1, conv2 (, bn2, conv3);
    `shortcut` = nn.Sequential(1x1 conv, BN) on `pre` when the shape changes, else the identity on the input."""

    def __init__(self, kind: str, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.kind = kind
        self.expansion = 4 if kind == "bottleneck" else 1
        self.bn0 = nn.BatchNorm2d(in_planes)
        if kind == "basic":
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.shortcut = _projection(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn0(x))
        out = F.relu(self.bn1(self.conv1(pre)))
        if self.kind == "basic":
            out = self.conv2(out)
        else:
            out = self.conv3(F.relu(self.bn2(self.conv2(out))))
        return out + (self.shortcut(pre) if len(self.shortcut) else x)


def _layer(kind: str, in_planes: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    layers = []
    for s in [stride] + [1] * (blocks - 1):
        layers.append(ReferenceBlock(kind, in_planes, planes, s))
        in_planes = planes * (4 if kind == "bottleneck" else 1)
    return nn.Sequential(*layers), in_planes


class ReferenceResNet(nn.Module):
    """`resnetv2.ResNet`: conv1 → bn1 → relu → layer1..4 → average pool → linear (`stages=3` and no linear: `P`,
    the Selfie patch encoder of `pretraining/resnetv2.py`, whose output is the pooled layer3)."""

    def __init__(
        self,
        kind: str = "bottleneck",
        blocks: tuple[int, ...] = (3, 4, 6, 3),
        planes: tuple[int, ...] = (64, 128, 256, 512),
        stem: int = 64,
        num_classes: int | None = 10,
        stages: int = 4,
    ):
        super().__init__()
        self.stages = stages
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        in_planes = stem
        for s in range(stages):
            layer, in_planes = _layer(kind, in_planes, planes[s], blocks[s], STAGE_STRIDES[s])
            setattr(self, f"layer{s + 1}", layer)
        self.out_planes = in_planes
        self.linear = nn.Linear(in_planes, num_classes) if num_classes else None

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for s in range(self.stages):
            out = getattr(self, f"layer{s + 1}")(out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The reference pools with a fixed window (4 for 32x32 images, 2 for P on 8x8 patches): the whole map.
        pooled = self.feature_map(x).mean(dim=(2, 3))
        return self.linear(pooled) if self.linear is not None else pooled


def reference_p(kind="bottleneck", blocks=(3, 4, 6), planes=(64, 128, 256), stem=64) -> ReferenceResNet:
    """`get_P_model()`: the trunk (stem + layer1..3) whose pooled output encodes one 8x8 patch."""
    return ReferenceResNet(kind, blocks, planes, stem, num_classes=None, stages=3)


# -- Selfie (pretraining/attention_pooling) ---------------------------------------------------------------------------
class _MultiHeadAttention(nn.Module):
    """Post-LN multi-head self-attention: LN(x + fc(attention(w_qs x, w_ks x, w_vs x))), heads head-major."""

    def __init__(self, n_head: int, d_model: int, d_k: int):
        super().__init__()
        self.n_head, self.d_k = n_head, d_k
        self.w_qs = nn.Linear(d_model, n_head * d_k)
        self.w_ks = nn.Linear(d_model, n_head * d_k)
        self.w_vs = nn.Linear(d_model, n_head * d_k)
        self.layer_norm = nn.LayerNorm(d_model)
        self.fc = nn.Linear(n_head * d_k, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def heads(t):  # [B, L, H·dk] → [B, H, L, dk]
            return t.view(b, n, self.n_head, self.d_k).transpose(1, 2)

        q, k, v = heads(self.w_qs(x)), heads(self.w_ks(x)), heads(self.w_vs(x))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d_k), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, self.n_head * self.d_k)
        return self.layer_norm(self.fc(out) + x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


class _FeedForward(nn.Module):
    """Position-wise w_2(GELU(w_1 x)) as 1x1 Conv1d's, then LN(· + x)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w_1 = nn.Conv1d(d_model, d_ff, 1)
        self.w_2 = nn.Conv1d(d_ff, d_model, 1)
        self.layer_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.w_2(_gelu_tanh(self.w_1(x.transpose(1, 2)))).transpose(1, 2)
        return self.layer_norm(out + x)


class _EncoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ff: int, n_head: int, d_k: int):
        super().__init__()
        self.slf_attn = _MultiHeadAttention(n_head, d_model, d_k)
        self.pos_ffn = _FeedForward(d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_ffn(self.slf_attn(x))


class _AttentionPooling(nn.Module):
    def __init__(self, n_layers: int, n_head: int, d_k: int, d_model: int, d_ff: int):
        super().__init__()
        self.layer_stack = nn.ModuleList([_EncoderLayer(d_model, d_ff, n_head, d_k) for _ in range(n_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer_stack:
            x = layer(x)
        return x[:, 0, :]


class ReferenceSelfie(nn.Module):
    """`SelfieModel(n_layers, n_heads, d_in, d_model, d_ff, n_split)`: n_layers + 1 encoder layers over [u0, visible];
    the query for position p is the output at u0 + row_embeddings[p // n_split] + column_embeddings[p % n_split]."""

    def __init__(self, n_layers=12, n_heads=16, d_k=64, d_model=1024, d_ff=2048, n_split=4):
        super().__init__()
        self.n_split = n_split
        self.at_pool = _AttentionPooling(n_layers + 1, n_heads, d_k, d_model, d_ff)
        self.row_embeddings = nn.Parameter(torch.randn(n_split, d_model))
        self.column_embeddings = nn.Parameter(torch.zeros(n_split, d_model))
        self.u0 = nn.Parameter(torch.zeros(1, 1, d_model))

    def forward(self, visible: torch.Tensor, positions) -> torch.Tensor:
        pooled = self.at_pool(torch.cat([self.u0.repeat(visible.shape[0], 1, 1), visible], dim=1))
        queries = [
            pooled + self.row_embeddings[p // self.n_split] + self.column_embeddings[p % self.n_split]
            for p in positions
        ]
        return torch.stack(queries, dim=1)


def selfie_patch_logits(p_model: nn.Module, selfie: ReferenceSelfie, images: torch.Tensor, order) -> torch.Tensor:
    """The reference's Selfie scores before its softmax: [B, 4 queries, 4 candidates] for a patch order (targets =
    the first quarter), patches 8x8 row-major as `split_image_selfie`."""
    b = images.shape[0]
    patches = [row_part for rows in images.split(8, dim=2) for row_part in rows.split(8, dim=3)]
    vectors = p_model(torch.cat(patches, 0)).view(len(patches), b, -1).transpose(0, 1)  # [B, 16, D]
    order = [int(o) for o in order]
    targets, visible = order[: len(order) // 4], order[len(order) // 4 :]
    queries = selfie(vectors[:, visible], targets)  # [B, 4, D]
    return queries @ vectors[:, targets].transpose(1, 2)


# -- ensembles --------------------------------------------------------------------------------------------------------
class PretrainEnsemble(nn.Module):
    """`pretraining/model_ensemble.PretrainEnsembleModel`: `blocks` = (conv1, layer1, layer2, layer3) — no stem
    BN/ReLU —, a layer4 + linear per classification head; normalisation hard-coded (no buffers)."""

    def __init__(self, kind="bottleneck", blocks=(3, 4, 6, 3), planes=(64, 128, 256, 512), stem=64, jigsaw_classes=31):
        super().__init__()
        trunk = ReferenceResNet(kind, blocks, planes, stem, num_classes=None)
        self.blocks = nn.Sequential(trunk.conv1, trunk.layer1, trunk.layer2, trunk.layer3)
        self.layer4_rotation = ReferenceResNet(kind, blocks, planes, stem, num_classes=None).layer4
        self.layer4_jigsaw = ReferenceResNet(kind, blocks, planes, stem, num_classes=None).layer4
        self.fc_rotation = nn.Linear(trunk.out_planes, 4)
        self.fc_jigsaw = nn.Linear(trunk.out_planes, jigsaw_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[None, :, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[None, :, None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks((x - self.mean) / self.std)

    def head_logits(self, x: torch.Tensor, head: str) -> torch.Tensor:
        out = getattr(self, f"layer4_{head}")(self(x))
        return getattr(self, f"fc_{head}")(out.mean(dim=(2, 3)))


class FinetuneEnsemble(nn.Module):
    """`finetune/model_ensemble.SelfEnsembleModel_all`: branch1..3 and `normalize`; output = mean of the three
    softmaxes (here of one input; the reference passes each branch its own)."""

    def __init__(self, **resnet_kwargs):
        super().__init__()
        for i in (1, 2, 3):
            setattr(self, f"branch{i}", ReferenceResNet(**resnet_kwargs))
        self.normalize = Normalizer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        return sum(torch.softmax(getattr(self, f"branch{i}")(x), dim=1) for i in (1, 2, 3)) / 3


class Chen2020Adversarial(nn.Module):
    """RobustBench's `Chen2020AdversarialNet`: branch1..3 registered again as `models.0..2`, buffers `mu`, `sigma`
    [1, 3, 1, 1]; output = mean of the three softmaxes."""

    def __init__(self, **resnet_kwargs):
        super().__init__()
        for i in (1, 2, 3):
            setattr(self, f"branch{i}", ReferenceResNet(**resnet_kwargs))
        self.models = nn.ModuleList([self.branch1, self.branch2, self.branch3])
        self.register_buffer("mu", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("sigma", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mu) / self.sigma
        return sum(torch.softmax(m(x), dim=1) for m in self.models) / 3


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights *and* BatchNorm statistics (every float parameter and buffer redrawn, scaled so logits stay of
    order 1), so an importer that mixes up any two tensors or ignores the running statistics is caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            leaf = name.rsplit(".", 1)[-1]
            if not t.is_floating_point() or leaf in ("mean", "std", "mu", "sigma"):  # the normalisers stay ImageNet's
                continue
            if leaf == "running_var":
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif leaf == "running_mean":
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.dim() == 1 and leaf == "weight":  # BN / LayerNorm scales
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif t.dim() == 1:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * math.sqrt(1.0 / fan_in))
    return module
