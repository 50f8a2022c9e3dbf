"""Frozen configuration dataclasses: the binaries turn absl flags into these and pass them down.

Library code never reads FLAGS. `config.json` in a run directory is `to_json(config)` plus versions; a re-run with
a different identity (everything but the runtime fields) is refused unless --overwrite.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from typing import Any

from advss_tf.attacks.pgd import check_budget
from advss_tf.data.datasets import LEGACY_DEFAULTS, DataSource
from advss_tf.errors import UsageError
from advss_tf.models.resnet import BackboneConfig

ATTACK_BN_MODES = ("train", "eval")
STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")
MIXED_PRECISION = ("none", "float16", "bfloat16")
SCHEDULES = ("cosine", "constant", "step")  # learning-rate schedules after the warm-up (training/schedules.py)
FINETUNE_OBJECTIVES = ("standard", "adversarial", "trades")  # the losses of tasks/finetune.py
FINETUNE_MODES = ("linear", "partial", "full")  # what trains; tasks/finetune.FROZEN_PARTS says what each freezes


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """L∞ PGD used while training. eps and step_size on the [0, 1] pixel scale."""

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    bn: str = "train"  # BatchNorm mode while crafting: the reference runs the model in train mode

    def __post_init__(self):
        check_budget(self.eps, self.step_size, self.steps)
        if self.bn not in ATTACK_BN_MODES:
            raise UsageError(f"unknown attack_bn {self.bn!r}; valid: {', '.join(ATTACK_BN_MODES)}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """SGD with momentum and coupled (PyTorch-style) L2 weight decay, plus the learning-rate schedule."""

    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    final_lr: float = 1e-6
    warmup_steps: int = 200
    warmup_start_lr: float = 0.01
    boundaries_epochs: tuple[int, ...] = ()
    decay_factor: float = 0.1

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise UsageError(f"--learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise UsageError(f"--weight_decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown lr schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How a run executes; changing these does not make it a different run."""

    strategy: str = "auto"
    num_cpu_devices: int = 1
    jit_compile: bool = False
    mixed_precision: str = "none"
    steps_per_loop: int = 10
    checkpoint_every: int = 100
    image_summary_every: int = 500
    max_checkpoints: int = 3
    quiet: bool = False
    cluster_resolver: str = "tf_config"
    worker_timeout: int = 300

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UsageError(f"unknown mixed_precision {self.mixed_precision!r}; valid: {', '.join(MIXED_PRECISION)}")
        for name in ("num_cpu_devices", "steps_per_loop", "checkpoint_every", "image_summary_every", "max_checkpoints"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Everything a pretraining run depends on."""

    task: str
    model_dir: str
    backbone: BackboneConfig = BackboneConfig()
    data: DataSource = DataSource()
    train_fraction: float = 1.0
    batch_size: int = 128
    epochs: float = 200.0
    train_steps: int = 0  # > 0 overrides epochs (smoke runs, benchmarks)
    adversarial: bool = True
    attack: AttackConfig = AttackConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    seed: int = 0
    jigsaw_permutations: int = 30
    jigsaw_identity_prob: float = 0.1
    selfie_layers: int = 13
    selfie_heads: int = 16
    selfie_ff_dim: int = 2048
    selfie_dropout: float = 0.1
    selfie_logit_scale: float = 0.0  # 0: 1/sqrt(trunk width)
    diversity_weight: float = 0.1
    runtime: RuntimeConfig = RuntimeConfig()

    def __post_init__(self):
        if self.batch_size < 1:
            raise UsageError(f"--batch_size must be >= 1, got {self.batch_size}")
        _check_length(self)
        if self.jigsaw_permutations < 1:
            raise UsageError(f"--jigsaw_permutations must be >= 1, got {self.jigsaw_permutations}")
        if not 0.0 <= self.jigsaw_identity_prob <= 1.0:
            raise UsageError(f"--jigsaw_identity_prob must be in [0, 1], got {self.jigsaw_identity_prob}")
        if self.diversity_weight < 0:
            raise UsageError(f"--diversity_weight must be >= 0, got {self.diversity_weight}")
        if self.task in ("selfie", "ensemble"):
            self._check_selfie_dims()

    def _check_selfie_dims(self) -> None:
        """Selfie's transformer must fit the trunk: d_model is the trunk's width, split evenly over the heads."""
        if min(self.selfie_layers, self.selfie_heads, self.selfie_ff_dim) < 1:
            raise UsageError("--selfie_layers, --selfie_heads and --selfie_ff_dim must be >= 1")
        width = self.backbone.trunk_channels
        if width % self.selfie_heads:
            raise UsageError(
                f"--selfie_heads={self.selfie_heads} does not divide the {self.backbone.name} trunk width {width}"
            )
        if not 0.0 <= self.selfie_dropout < 1.0:
            raise UsageError(f"--selfie_dropout must be in [0, 1), got {self.selfie_dropout}")
        if self.selfie_logit_scale < 0:
            raise UsageError(
                f"--selfie_logit_scale must be >= 0 (0 = 1/sqrt(trunk width)), got {self.selfie_logit_scale}"
            )

    @property
    def selfie_scale(self) -> float:
        """The factor on Selfie's query-patch dot products: --selfie_logit_scale, or 1/sqrt(trunk width) when 0."""
        return self.selfie_logit_scale or self.backbone.trunk_channels**-0.5


# The reference recipe (finetune/main.py): SGD 0.9, lr 0.1, coupled L2 3e-4, ×0.1 at epochs 60 and 80, and in
# epoch 0 a linear warm-up 0.01 → 0.1 over 200 steps.
FINETUNE_OPTIMIZER = OptimizerConfig(
    learning_rate=0.1,
    momentum=0.9,
    weight_decay=3e-4,
    schedule="step",
    warmup_steps=200,
    warmup_start_lr=0.01,
    boundaries_epochs=(60, 80),
    decay_factor=0.1,
)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Everything a fine-tuning run depends on.

    `backbone` None means: the pretraining export's backbone (or resnet18 without `pretrained`), with `sync_bn`.
    """

    model_dir: str
    pretrained: str | None = None
    backbone: BackboneConfig | None = None
    sync_bn: bool = False
    mode: str = "full"
    objective: str = "adversarial"
    trades_beta: float = 6.0
    aux_rotation_weight: float = 0.0
    data: DataSource = DataSource()
    train_fraction: float = 1.0
    batch_size: int = 128
    epochs: float = 100.0
    train_steps: int = 0  # > 0 overrides epochs (smoke runs, benchmarks)
    attack: AttackConfig = AttackConfig()
    val_attack_steps: int = 20
    val_examples: int = 0  # 0: the whole validation split
    val_batch_size: int = 128
    optimizer: OptimizerConfig = FINETUNE_OPTIMIZER
    seed: int = 0
    runtime: RuntimeConfig = RuntimeConfig()

    def __post_init__(self):
        if self.mode not in FINETUNE_MODES:
            raise UsageError(f"unknown mode {self.mode!r}; valid: {', '.join(FINETUNE_MODES)}")
        if self.objective not in FINETUNE_OBJECTIVES:
            raise UsageError(f"unknown objective {self.objective!r}; valid: {', '.join(FINETUNE_OBJECTIVES)}")
        if self.trades_beta < 0:
            raise UsageError(f"--trades_beta must be >= 0, got {self.trades_beta}")
        if self.aux_rotation_weight < 0:
            raise UsageError(f"--aux_rotation_weight must be >= 0, got {self.aux_rotation_weight}")
        if self.aux_rotation_weight > 0 and self.objective == "trades":
            raise UsageError("--aux_rotation_weight goes with --objective=adversarial or standard, not trades")
        if self.mode != "full" and not self.pretrained:
            raise UsageError(f"--mode={self.mode} freezes the backbone: it needs --pretrained=<pretraining export>")
        if self.batch_size < 1 or self.val_batch_size < 1:
            raise UsageError("--batch_size and --val_batch_size must be >= 1")
        _check_length(self)
        if self.val_examples < 0:
            raise UsageError(f"--val_examples must be >= 0, got {self.val_examples}")
        check_budget(self.attack.eps, self.attack.step_size, self.val_attack_steps)

    @property
    def adversarial(self) -> bool:
        return self.objective != "standard"


def _check_length(cfg) -> None:
    """How much a run trains on (PretrainConfig and FinetuneConfig alike): a fraction of the split, epochs or steps."""
    if not 0.0 < cfg.train_fraction <= 1.0:
        raise UsageError(f"--train_fraction must be in (0, 1], got {cfg.train_fraction}")
    if cfg.epochs <= 0 and cfg.train_steps <= 0:
        raise UsageError("give --epochs > 0 or --train_steps > 0")


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def versions() -> dict[str, str]:
    import keras
    import numpy as np
    import tensorflow as tf

    import advss_tf

    return {
        "advss_tf": advss_tf.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# What config.json holds besides the config that does not make a run what it is: where it runs, the versions, and
# the facts read from the data (`data_info`: class count, image shape; the same source always gives the same).
_NOT_IDENTITY = ("runtime", "model_dir", "versions", "data_info")


def identity(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that makes a run what it is (runtime, output location and data facts excluded).

    A config.json written before the data fields of `LEGACY_DEFAULTS` existed meant their defaults: they are filled
    in, so such a run still resumes.
    """
    out = {k: v for k, v in config_dict.items() if k not in _NOT_IDENTITY}
    if isinstance(out.get("data"), dict):
        out["data"] = {**LEGACY_DEFAULTS, **out["data"]}
    return out


def dumps(config, data_info: dict[str, Any] | None = None) -> str:
    """config.json's text: the config, the versions, and (when given) what the data holds."""
    extra = {"data_info": data_info} if data_info is not None else {}
    return json.dumps({**to_dict(config), **extra, "versions": versions()}, indent=2, sort_keys=True)
