"""The real pretraining (and fine-tuning) step for the tools that time it: the run kinds' own task and model, and
the run skeleton's optimizer, `Trainer` and input pipeline (advss_tf.training.runs), on real CIFAR-10.

Shared by benchmark_step.py and benchmark_vs_torch.py (not part of the library).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import advss_tf  # noqa: F401  (TF_ENABLE_ONEDNN_OPTS before TensorFlow)

FINETUNE = "finetune"  # the `task` of fine-tuning's step (not a pretext task)


@dataclasses.dataclass
class PretrainStep:
    """What a timing tool needs: the trainer, an endless distributed batch iterator, the model and its task."""

    trainer: Any
    iterator: Any
    model: Any
    task: Any
    config: Any


def _assemble(cfg, kind, batch_norm: str, input_pipeline: bool = True) -> PretrainStep:
    """The run skeleton's own pieces (advss_tf.training.runs) without a run directory: precision, strategy, the
    kind's task and model built in the scope (under the forced BatchNormalization layer), its optimizer, the
    `Trainer` and (`input_pipeline`) an endless distributed iterator over real CIFAR-10 training images."""
    from advss_tf.data import cifar10
    from advss_tf.models.layers import batch_norm_layer
    from advss_tf.training import runs
    from advss_tf.training.strategy import make_strategy

    runs.set_precision(cfg.runtime.mixed_precision)
    strategy = make_strategy(cfg.runtime.strategy)
    split = cifar10.load(cifar10.DataSource(), "train")
    with batch_norm_layer(batch_norm):
        built, optimizer, _ = runs.build(kind, cfg, strategy, split.info, 10, cfg.train_steps)
    trainer = runs.make_trainer(cfg, strategy, built, optimizer)
    iterator = (
        runs.input_iterator(kind, cfg, strategy, built.task, split.images, split.labels) if input_pipeline else None
    )
    return PretrainStep(trainer, iterator, built.model, built.task, cfg)


def build_step(
    task: str,
    backbone: str,
    batch_size: int,
    *,
    attack_steps: int = 10,
    jit_compile: bool = False,
    strategy: str = "auto",
    mixed_precision: str = "none",
    train_steps: int = 1000,
    batch_norm: str = "auto",
    arch_version: int | None = None,
    attack_bn: str = "train",
    input_pipeline: bool = True,
    **config_fields,
) -> PretrainStep:
    """The training step a binary runs: a pretext task's (`task` from the table) or fine-tuning's (`task` =
    FINETUNE: its classifier from random init — what one step costs does not depend on the weights), with the same
    `Trainer` and real input pipeline; no checkpoint, no validation, no export.

    `config_fields` go to the run's config (pretraining: `adversarial`, `selfie_layers`, ...; fine-tuning:
    `objective`, `mode`). `batch_norm` forces a BatchNormalization layer (advss_tf.models.layers.BATCH_NORM_LAYERS)
    to time either; "auto" keeps the binary's choice. `arch_version` chooses the block definition (None: the
    default, the reference's). `attack_bn` is the binaries' --attack_bn. Without `input_pipeline` the step's
    `iterator` is None (the caller feeds it, e.g. `repeating_iterator`), so no tf.data threads augment batches in the
    background while it is timed.
    """
    from advss_tf.config import AttackConfig, FinetuneConfig, PretrainConfig, RuntimeConfig
    from advss_tf.models.backbones import BackboneConfig
    from advss_tf.training.finetuning import FinetuneRun
    from advss_tf.training.pretraining import PretrainRun

    shared = dict(
        model_dir="/tmp/unused",
        backbone=BackboneConfig(backbone)
        if arch_version is None
        else BackboneConfig(backbone, arch_version=arch_version),
        batch_size=batch_size,
        train_steps=train_steps,
        attack=AttackConfig(steps=attack_steps, bn=attack_bn),
        runtime=RuntimeConfig(strategy=strategy, jit_compile=jit_compile, mixed_precision=mixed_precision),
    )
    if task == FINETUNE:
        return _assemble(FinetuneConfig(**shared, **config_fields), FinetuneRun(), batch_norm, input_pipeline)
    return _assemble(PretrainConfig(task=task, **shared, **config_fields), PretrainRun(), batch_norm, input_pipeline)


def repeating_iterator(step: PretrainStep, batch: dict) -> Any:
    """An endless distributed iterator that yields `batch` (arrays of the global batch, the keys the task's transform
    gives plus `noise_seed`) at every step: a step fed pre-made inputs, its data pipeline left out."""
    import tensorflow as tf

    from advss_tf.training import cluster

    dataset = tf.data.Dataset.from_tensors({k: tf.constant(v) for k, v in batch.items()}).repeat()
    return iter(cluster.distribute_dataset(step.trainer.strategy, dataset))


def acl_paper_fields() -> dict[str, Any]:
    """`build_step` arguments that make the `acl` step the one flags/paper/pretrain_acl.flags runs (ACL's code):
    the attack in inference mode, LARS with its schedule, τ = 0.5 (tests/test_flagfiles.py checks them against the
    flagfile). Batch size, backbone and PGD steps are the caller's."""
    from advss_tf.config import ContrastiveConfig, OptimizerConfig

    optimizer = OptimizerConfig(
        optimizer="lars",
        learning_rate=5.0,
        momentum=0.9,
        weight_decay=1e-6,
        trust_coefficient=1e-3,
        schedule="warmup_cosine",
        warmup_epochs=10,
        final_lr=1e-6,
        warmup_steps=0,
    )
    return dict(attack_bn="eval", optimizer=optimizer, contrastive=ContrastiveConfig(temperature=0.5))
