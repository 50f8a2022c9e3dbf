"""The backbone registry: every family, every backbone `--backbone` accepts, and the two parts each model is built of.

A backbone is a family (one module that knows only its own architecture and imports only models/layers.py) and an
`ArchSpec` (its depth and widths). This module is the only one that knows them all: `FAMILIES` says how each family
builds its trunk and stage 4 from a `BackboneConfig`, `BACKBONES` names every backbone, and `build_trunk` /
`build_stage4` build the parts of whichever backbone a config names. The split is the same in every family
(docs/architecture.md, "Backbones"): the trunk is every stage but the last (the paper's θp, shared by every pretext
head), stage 4 is the last stage, of which each head owns its own. `build_routed` builds either part with one
BatchNorm per route (the contrastive tasks' clean and adversarial routes) for every family.

Families: `resnet` (pre-activation ResNets), `wide_resnet`, `post_resnet` (ACL's post-activation ResNet).
Adding a family: its module beside resnet.py (build_trunk, build_stage4, stage_channels from an `ArchSpec` and
explicit arguments), one entry in `FAMILIES`, and its rows in `BACKBONES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import keras

from advss_tf.errors import UsageError
from advss_tf.models import post_resnet, resnet, wide_resnet
from advss_tf.models.layers import ArchSpec, route_part

ARCH_VERSION = 2  # what new models are built with: the reference's block (models/resnet.py)
LEGACY_ARCH_VERSION = 1  # what an export or config.json without a version was written with
ARCH_VERSIONS = (LEGACY_ARCH_VERSION, ARCH_VERSION)


@dataclasses.dataclass(frozen=True)
class Family:
    """How one family builds a config's trunk and stage 4 (config, part name → model), and a stage's width."""

    build_trunk: Callable[[BackboneConfig, str], keras.Model]
    build_stage4: Callable[[BackboneConfig, str], keras.Model]
    stage_channels: Callable[[ArchSpec, int], int]
    # A part with a BatchNorm per route (config, part name, routes → model) where the family's own layers hold the
    # routes; None for a functional family, whose one-route part `build_routed` rebuilds per route (`route_part`).
    build_routed: Callable[[BackboneConfig, str, tuple[str, ...]], keras.Model] | None = None


FAMILIES: dict[str, Family] = {
    "resnet": Family(
        lambda cfg, name: resnet.build_trunk(
            cfg.spec, sync_bn=cfg.sync_bn, arch_version=cfg.arch_version, stem_norm=cfg.stem_norm, name=name
        ),
        lambda cfg, name: resnet.build_stage4(cfg.spec, sync_bn=cfg.sync_bn, arch_version=cfg.arch_version, name=name),
        resnet.stage_channels,
    ),
    # One block definition, whatever `arch_version` says; no stem BN to drop.
    "wide_resnet": Family(
        lambda cfg, name: wide_resnet.build_trunk(cfg.spec, sync_bn=cfg.sync_bn, name=name),
        lambda cfg, name: wide_resnet.build_stage4(cfg.spec, sync_bn=cfg.sync_bn, name=name),
        wide_resnet.stage_channels,
    ),
    # ACL / DynACL / AIR's post-activation ResNet (torchvision's block), one BatchNorm route when built here and the
    # routes `build_routed` names (the contrastive tasks: ACL's two, post_resnet.ROUTES) in its dual BatchNorms.
    "post_resnet": Family(
        lambda cfg, name: post_resnet.build_trunk(cfg.spec, sync_bn=cfg.sync_bn, name=name),
        lambda cfg, name: post_resnet.build_stage4(cfg.spec, sync_bn=cfg.sync_bn, name=name),
        post_resnet.stage_channels,
        lambda cfg, part, routes: (post_resnet.build_trunk if part == "trunk" else post_resnet.build_stage4)(
            cfg.spec, sync_bn=cfg.sync_bn, routes=routes, name=part
        ),
    ),
}

BACKBONES: dict[str, ArchSpec] = {
    "resnet50v2": ArchSpec("resnet", "bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet18": ArchSpec("resnet", "basic", (2, 2, 2, 2), (64, 128, 256, 512), 64),
    # Width/depth-reduced for tests and CPU smoke runs: same code path, ~0.2M parameters.
    "tiny": ArchSpec("resnet", "basic", (1, 1, 1, 1), (16, 32, 64, 128), 16),
    # Half of tiny's widths: the test suite's attack fixture (tests/conftest.py trained_classifier), where the
    # attacks' thousands of forward passes are most of the time; ~0.08M parameters.
    "micro": ArchSpec("resnet", "basic", (1, 1, 1, 1), (8, 16, 32, 64), 8),
    # WideResNet-d-k (models/wide_resnet.py): (d - 4) / 6 blocks in each of 3 stages of widths 16k, 32k, 64k.
    "wrn28_10": ArchSpec("wide_resnet", "wide", (4, 4, 4), (160, 320, 640), 16),
    "wrn34_10": ArchSpec("wide_resnet", "wide", (5, 5, 5), (160, 320, 640), 16),
    "wrn10_2": ArchSpec("wide_resnet", "wide", (1, 1, 1), (32, 64, 128), 16),  # tests and CPU smoke runs
    # The post-activation ResNet-18 of ACL, DynACL and AIR (models/post_resnet.py; ACL resnet_multi_bn.py:343-352),
    # and tiny's widths in it for tests and CPU smoke runs.
    "resnet18_post": ArchSpec("post_resnet", "basic", (2, 2, 2, 2), (64, 128, 256, 512), 64),
    "tiny_post": ArchSpec("post_resnet", "basic", (1, 1, 1, 1), (16, 32, 64, 128), 16),
}


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Which backbone, whether BatchNorm statistics are synchronised across replicas, and the block definition
    (`arch_version`: 2 the reference's, 1 the pre-issue-18 one; see models/resnet.py)."""

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

    @property
    def family(self) -> str:
        """The family's name: a key of FAMILIES."""
        return self.spec.family

    def stage_channels(self, stage: int) -> int:
        """Output channels of stage 1..4 (1..3 for a WideResNet)."""
        return FAMILIES[self.family].stage_channels(self.spec, stage)

    @property
    def trunk_channels(self) -> int:
        return self.stage_channels(len(self.spec.blocks) - 1)  # the trunk: every stage but the last

    @property
    def feature_dim(self) -> int:
        return self.stage_channels(len(self.spec.blocks))


def build_trunk(cfg: BackboneConfig, name: str = "trunk") -> keras.Model:
    """The trunk of `cfg`'s backbone: images [N, H, W, 3] in [0, 1] → its feature map [N, h, w, trunk_channels].

    Spatial size is left open so Selfie can encode 8x8 patches with the same weights.
    """
    return FAMILIES[cfg.family].build_trunk(cfg, name)


def build_stage4(cfg: BackboneConfig, name: str = "stage4") -> keras.Model:
    """The last stage of `cfg`'s backbone: trunk feature map → [N, h', w', feature_dim]."""
    return FAMILIES[cfg.family].build_stage4(cfg, name)


PARTS = ("trunk", "stage4")  # what `build_routed` builds


def build_routed(cfg: BackboneConfig, part: str, routes: Sequence[str]) -> keras.Model:
    """`part` ("trunk" or "stage4") of `cfg`'s backbone with one BatchNorm per route at every BatchNorm place, the
    convolutions shared by the routes: `model(x, training, route)` runs the named route and, in training mode, moves
    only its statistics. Every family: the post-activation ResNet's dual BatchNorms, or a functional family's
    one-route part rebuilt per route (`layers.route_part`), with the layer names and order of its one-route part
    (so `post_resnet.copy_route` fills a one-route part from either)."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; valid: {', '.join(PARTS)}")
    family = FAMILIES[cfg.family]
    if family.build_routed is not None:
        return family.build_routed(cfg, part, tuple(routes))
    one_route = build_trunk(cfg, part) if part == "trunk" else build_stage4(cfg, part)
    return route_part(one_route, routes)
