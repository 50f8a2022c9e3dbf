"""Frozen configuration dataclasses: the binaries turn absl flags into these and pass them down.

Library code never reads FLAGS. `config.json` in a run directory is `to_json(config)` plus versions; a re-run with
a different identity (everything but the runtime fields) is refused unless --overwrite.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from collections.abc import Iterable, Mapping
from typing import Any

from advss_tf.attacks.pgd import check_budget
from advss_tf.attacks.registry import (
    DEFAULT_ATTACKS,
    AttackSpec,
    autoattack_composite,
    components,
    configure,
    parse_attacks,
    with_budgets,
)
from advss_tf.corruptions.cifar10c import HEADLINE_CORRUPTIONS, SEVERITIES, parse_corruptions, parse_severities
from advss_tf.corruptions.sources import CIFAR10C_SOURCES
from advss_tf.data.datasets import LEGACY_DEFAULTS, DataSource
from advss_tf.errors import UsageError
from advss_tf.models.backbones import BackboneConfig

ATTACK_BN_MODES = ("train", "eval")
STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")
MIXED_PRECISION = ("none", "float16", "bfloat16")
# Learning-rate schedules after the warm-up (training/schedules.py); the two warmup_cosine ones carry their own
# linear warm-up of --warmup_epochs (ACL / AIR per step, DynACL per epoch).
SCHEDULES = ("cosine", "constant", "step", "warmup_cosine", "warmup_cosine_epochs")
OPTIMIZERS = ("sgd", "lars")  # SGD with coupled L2; LARS as ACL / DynACL / AIR (training/lars.py)
CONTRASTIVE_TASKS = ("acl", "dynacl")  # the robust contrastive pretraining tasks (tasks/contrastive.py)
FINETUNE_OBJECTIVES = ("standard", "adversarial", "trades")  # the losses of tasks/finetune.py
FINETUNE_MODES = ("linear", "partial", "full")  # what trains; tasks/finetune.FROZEN_PARTS says what each freezes
HEAD_INITS = ("glorot_uniform", "zeros")  # the new Dense head's weights: Keras' default, or the RobustSSL benchmark's
PSEUDO_LABELS = ("none", "kmeans", "pretrained")  # DynACL++: training/pseudo_labels.py


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
    """SGD with momentum and coupled (PyTorch-style) L2 weight decay, or LARS (weight decay inside its trust ratio,
    `trust_coefficient`), plus the learning-rate schedule."""

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
    optimizer: str = "sgd"
    trust_coefficient: float = 1e-3  # LARS only
    warmup_epochs: float = 0.0  # the warmup_cosine schedules' linear warm-up, in epochs

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.trust_coefficient <= 0 or self.warmup_epochs < 0:
            raise UsageError("--trust_coefficient must be > 0 and --warmup_epochs >= 0")
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
class ContrastiveConfig:
    """The settings of the contrastive tasks (`acl`, `dynacl`; tasks/contrastive.py); docs/contrastive.md traces each
    default to its source line."""

    temperature: float = 0.5  # NT-Xent's τ
    air: bool = False  # AIR's regularisers and loss (Xu et al. 2023)
    air_sir_weight: float = 0.5  # AIR's λ1: the standard-invariant regulariser
    air_air_weight: float = 0.5  # AIR's λ2: the adversarial-invariant regulariser
    dynacl_period: int = 50  # DynACL's K: the augmentation strength (and loss weight) change every K epochs
    dynacl_swap_param: float = 2 / 3  # DynACL's λ (swap_param) in the adversarial loss weight
    dynacl_encoder_momentum: float = 0.99  # DynACL's momentum encoder m

    def __post_init__(self):
        if self.temperature <= 0:
            raise UsageError(f"--temperature must be > 0, got {self.temperature}")
        if min(self.air_sir_weight, self.air_air_weight, self.dynacl_swap_param) < 0:
            raise UsageError("--air_sir_weight, --air_air_weight and --dynacl_swap_param must be >= 0")
        if self.dynacl_period < 1:
            raise UsageError(f"--dynacl_period must be >= 1 (epochs), got {self.dynacl_period}")
        if not 0.0 <= self.dynacl_encoder_momentum < 1.0:
            raise UsageError(f"--dynacl_encoder_momentum must be in [0, 1), got {self.dynacl_encoder_momentum}")


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
    contrastive: ContrastiveConfig = ContrastiveConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    def __post_init__(self):
        if self.batch_size < 1:
            raise UsageError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.task in CONTRASTIVE_TASKS and not self.adversarial:
            raise UsageError(f"--task={self.task} is adversarial contrastive pretraining: it has no --noadversarial")
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
    pretrained_route: str | None = None  # an export with two BatchNorm routes: which one (None: adversarial)
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
    head_init: str = "glorot_uniform"
    restore_head: bool = False  # also restore the export's `head` (DynACL++: the AFT continues the linear probe)
    pseudo_labels: str = "none"  # one of PSEUDO_LABELS (DynACL++)
    kmeans_clusters: int = 10

    def __post_init__(self):
        self._check_head_and_labels()
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
        if self.pretrained_route is not None and not self.pretrained:
            raise UsageError("--pretrained_route chooses a route of a --pretrained export: give --pretrained")
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

    def _check_head_and_labels(self) -> None:
        if self.head_init not in HEAD_INITS:
            raise UsageError(f"unknown head_init {self.head_init!r}; valid: {', '.join(HEAD_INITS)}")
        if self.restore_head and not self.pretrained:
            raise UsageError("--restore_head restores the head of --pretrained: give --pretrained")
        if self.pseudo_labels not in PSEUDO_LABELS:
            raise UsageError(f"unknown pseudo_labels {self.pseudo_labels!r}; valid: {', '.join(PSEUDO_LABELS)}")
        if self.pseudo_labels != "none" and not self.pretrained:
            raise UsageError(f"--pseudo_labels={self.pseudo_labels} reads --pretrained: give --pretrained")
        if self.kmeans_clusters < 2:
            raise UsageError(f"--kmeans_clusters must be >= 2, got {self.kmeans_clusters}")


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


def _defaults(cls) -> dict[str, Any]:
    """The fields of dataclass `cls` that have defaults, at their defaults (nested dataclasses as dicts)."""
    out = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            continue
        out[field.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return json.loads(json.dumps(out))  # as config.json holds them (tuples as lists)


def with_added_defaults(old: dict[str, Any], config) -> dict[str, Any]:
    """`old` (a config.json's dict) with every field of `config`'s class it lacks at its default, nested configs
    included: a config.json written before a field existed (the optimizer's name, the contrastive settings) meant
    its default, so such a run still resumes."""

    def fill(d: dict[str, Any], cls) -> dict[str, Any]:
        out = {**_defaults(cls), **d}
        for field in dataclasses.fields(cls):
            if dataclasses.is_dataclass(field.default) and isinstance(out.get(field.name), dict):
                out[field.name] = fill(out[field.name], type(field.default))
        return out

    return fill(old, type(config))


def identity(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that makes a run what it is (runtime, output location and data facts excluded).

    A config.json written before the data fields of `LEGACY_DEFAULTS` existed meant their defaults: they are filled
    in, so such a run still resumes (other fields added later: `with_added_defaults`).
    """
    out = {k: v for k, v in config_dict.items() if k not in _NOT_IDENTITY}
    if isinstance(out.get("data"), dict):
        out["data"] = {**LEGACY_DEFAULTS, **out["data"]}
    return out


def dumps(config, data_info: dict[str, Any] | None = None) -> str:
    """config.json's text: the config, the versions, and (when given) what the data holds."""
    extra = {"data_info": data_info} if data_info is not None else {}
    return json.dumps({**to_dict(config), **extra, "versions": versions()}, indent=2, sort_keys=True)


# -- Evaluation: the settings of `python -m advss_tf.evaluate`, and the one set of defaults and the one attack plan
# that the evaluate binary and the Python API (`advss_tf.autoattack`, `evaluate_robustness`) share -----------------
DEFAULT_TARGETS = 9  # AutoAttack's standard version: the top 9 non-true classes
DEFAULT_SQUARE_QUERIES = 5000  # AutoAttack's standard version
DEFAULT_EPSILON = {"linf": 8 / 255, "l2": 0.5}  # per norm, on the [0, 1] pixel scale
DEFAULT_EPSILON_LARGE = 16 / 255  # pgd20_eps16's L∞ radius
NO_CIFAR10C = "none"
EVAL_STRATEGIES = ("auto", "mirrored", "one_device")


def attack_plan(
    attacks: Iterable[str],
    *,
    restarts: int = 1,
    epsilons: Mapping[str, float] | None = None,
    autoattack_norm: str = "linf",
    autoattack_version: str = "standard",
    targets: int = DEFAULT_TARGETS,
    square_queries: int = DEFAULT_SQUARE_QUERIES,
) -> list[tuple[str, list[AttackSpec]]]:
    """(name, specs) per attack: one spec for an attack, the stages in order for a composite — the one plan builder.

    Args:
      attacks: names as `--attacks` takes them ('all', composites, a+b chains; `autoattack` becomes the composite of
        `autoattack_version` and `autoattack_norm`).
      restarts: random restarts per attack.
      epsilons: radius per budget ("linf", "linf_large", "l2"); a budget left out keeps the registry's.
      targets: target classes of the targeted attacks (APGD-T, FAB-T); the class count bounds it
        (`evaluation.core.check_class_count`).
      square_queries: Square's query budget.

    Raises:
      UsageError: an unknown name, budget, version or norm, ε out of range, restarts < 1.
    """
    plan = []
    for name in parse_attacks(attacks, autoattack_norm, autoattack_version):
        specs = configure(
            components(name) or (name,),
            restarts=restarts,
            epsilons=epsilons,
            autoattack_norm=autoattack_norm,
            autoattack_version=autoattack_version,
        )
        plan.append((name, [with_budgets(s, targets=targets, square_queries=square_queries) for s in specs]))
    return plan


def default_model_name(path: str) -> str:
    """A short label for plots: the run directory's name for <run>/export/<x>, else the folder name."""
    parts = os.path.abspath(path).rstrip(os.sep).split(os.sep)
    if len(parts) >= 3 and parts[-2] == "export":
        return parts[-3]
    return parts[-1] or "model"


def default_output_dir(model: str, model_name: str | None = None) -> str:
    """runs/<name>_eval, <name> the model's label (`--model_name`, or the run directory of <run>/export/<x>)."""
    return os.path.join("runs", f"{model_name or default_model_name(model)}_eval")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Everything an evaluation depends on; ε on the [0, 1] pixel scale."""

    model: str
    output_dir: str | None = None  # None: default_output_dir(model, model_name)
    model_name: str | None = None
    data: DataSource = DataSource()
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    restarts: int = 1
    linf_epsilon: float = DEFAULT_EPSILON["linf"]
    linf_epsilon_large: float = DEFAULT_EPSILON_LARGE
    l2_epsilon: float = DEFAULT_EPSILON["l2"]
    autoattack_norm: str = "linf"  # which AutoAttack `autoattack` names: linf (autoattack) or l2 (autoattack_l2)
    autoattack_version: str = "standard"  # standard, or rand (randomised models: APGD-CE, APGD-DLR with EOT)
    batch_size: int = 128
    max_examples: int = 0  # 0: the whole test set
    cifar10c_source: str = NO_CIFAR10C
    cifar10c_dir: str | None = None
    corruptions: tuple[str, ...] = HEADLINE_CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES
    seed: int = 0
    targets: int = DEFAULT_TARGETS
    square_queries: int = DEFAULT_SQUARE_QUERIES
    strategy: str = "auto"
    num_cpu_devices: int = 1
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self):
        if self.output_dir is None:
            object.__setattr__(self, "output_dir", default_output_dir(self.model, self.model_name))
        if self.targets < 1:  # the upper bound is the data's class count - 1: `evaluation.core.check_class_count`
            raise UsageError(f"--targets must be >= 1 (and below the model's class count), got {self.targets}")
        if self.square_queries < 1:
            raise UsageError(f"--square_queries must be >= 1, got {self.square_queries}")
        if self.strategy not in EVAL_STRATEGIES:
            raise UsageError(f"unknown strategy {self.strategy!r}; valid: {', '.join(EVAL_STRATEGIES)}")
        if self.batch_size < 1:
            raise UsageError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.max_examples < 0:
            raise UsageError(f"--max_examples must be >= 0 (0: all), got {self.max_examples}")
        if self.cifar10c_source not in (NO_CIFAR10C, *CIFAR10C_SOURCES):
            valid = ", ".join((NO_CIFAR10C, *CIFAR10C_SOURCES))
            raise UsageError(f"unknown CIFAR-10-C source {self.cifar10c_source!r}; valid: {valid}")
        autoattack_composite(self.autoattack_version, self.autoattack_norm)  # validates both
        self.attack_specs()  # validates names, radii and restarts
        # Normalised in place ('all' → names, "5" → 5): results.json records what actually ran.
        attacks = parse_attacks(self.attacks, self.autoattack_norm, self.autoattack_version)
        object.__setattr__(self, "attacks", tuple(attacks))
        object.__setattr__(self, "corruptions", parse_corruptions(self.corruptions))
        object.__setattr__(self, "severities", parse_severities(self.severities))

    def attack_specs(self) -> list[AttackSpec]:
        """Every single attack to run, composites' components included, in order."""
        return [spec for _, specs in self.attack_plan() for spec in specs]

    def attack_plan(self) -> list[tuple[str, list[AttackSpec]]]:
        """(name, specs) per `--attacks` entry (`attack_plan`)."""
        return attack_plan(
            self.attacks,
            restarts=self.restarts,
            epsilons={"linf": self.linf_epsilon, "linf_large": self.linf_epsilon_large, "l2": self.l2_epsilon},
            autoattack_norm=self.autoattack_norm,
            autoattack_version=self.autoattack_version,
            targets=self.targets,
            square_queries=self.square_queries,
        )

    def settings(self) -> dict[str, Any]:
        """The settings results.json records (output location and verbosity left out)."""
        d = dataclasses.asdict(self)
        for k in ("output_dir", "overwrite", "quiet"):
            d.pop(k)
        return d
