"""The real pretraining (and fine-tuning) step for the tools that time it: task, model, optimizer and `Trainer` on
real CIFAR-10.

Shared by benchmark_step.py, benchmark_vs_torch.py and profile_step.py (not part of the library).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import advss_tf  # noqa: F401  (TF_ENABLE_ONEDNN_OPTS before TensorFlow)


@dataclasses.dataclass
class PretrainStep:
    """What a timing tool needs: the trainer, an endless distributed batch iterator, the model and its task."""

    trainer: Any
    iterator: Any
    model: Any
    task: Any
    config: Any


def _assemble(cfg, strategy, mixed_precision, batch_norm, jit_compile, build, *, attack_bn_train, augmentation):
    """The part both builders share: precision, strategy, real images, the model built by `build()` in the scope
    (→ task, model, trainable variables), its optimizer, the `Trainer` and an endless distributed batch iterator."""
    from advss_tf.data import cifar10, pipeline
    from advss_tf.models.layers import batch_norm_layer
    from advss_tf.training import loop
    from advss_tf.training.runs import make_optimizer, set_precision
    from advss_tf.training.strategy import make_strategy

    set_precision(mixed_precision)
    dist = make_strategy(strategy)
    images, labels = cifar10.load_arrays(cifar10.DataSource(), "train")
    with dist.scope(), batch_norm_layer(batch_norm):
        task, model, variables = build()
        optimizer, _ = make_optimizer(cfg, 10, cfg.train_steps, mixed_precision)
        optimizer.build(variables)
    trainer = loop.Trainer(
        dist,
        task,
        model,
        optimizer,
        global_batch_size=cfg.batch_size,
        weight_decay=cfg.optimizer.weight_decay,
        adversarial=cfg.adversarial,
        attack_bn_train=attack_bn_train,
        jit_compile=jit_compile,
        trainable_variables=variables,
    )
    ds = pipeline.train_dataset(
        images, labels, global_batch_size=cfg.batch_size, seed=0, transform=task.transform, **augmentation
    )
    iterator = iter(dist.experimental_distribute_dataset(ds))
    return PretrainStep(trainer, iterator, model, task, cfg)


def _backbone(name: str, arch_version: int | None):
    """BackboneConfig(name) with the given block definition (None: the default, the reference's)."""
    from advss_tf.models.backbones import BackboneConfig

    return BackboneConfig(name) if arch_version is None else BackboneConfig(name, arch_version=arch_version)


def build_pretrain_step(
    task: str,
    backbone: str,
    batch_size: int,
    *,
    adversarial: bool = True,
    attack_steps: int = 10,
    jit_compile: bool = False,
    strategy: str = "auto",
    mixed_precision: str = "none",
    train_steps: int = 1000,
    batch_norm: str = "auto",
    arch_version: int | None = None,
    **config_overrides,
) -> PretrainStep:
    """Builds the task's model and the same `Trainer` the pretrain binary uses, fed by its real input pipeline.

    `batch_norm` forces a BatchNormalization layer (advss_tf.models.layers.BATCH_NORM_LAYERS) to time either;
    "auto" keeps the binary's choice. `arch_version` chooses the block definition (models/resnet.py).
    """
    from advss_tf.config import AttackConfig, PretrainConfig
    from advss_tf.tasks.table import AUGMENTATION, build_task

    cfg = PretrainConfig(
        task=task,
        model_dir="/tmp/unused",
        backbone=_backbone(backbone, arch_version),
        batch_size=batch_size,
        train_steps=train_steps,
        adversarial=adversarial,
        attack=AttackConfig(steps=attack_steps),
        **config_overrides,
    )

    def build():
        pretext = build_task(cfg)
        model = pretext.build_model()
        return pretext, model, model.trainable_variables

    return _assemble(
        cfg, strategy, mixed_precision, batch_norm, jit_compile, build,
        attack_bn_train=True, augmentation=AUGMENTATION[task],
    )  # fmt: skip


def build_finetune_step(
    objective: str,
    backbone: str,
    batch_size: int,
    *,
    mode: str = "full",
    attack_steps: int = 10,
    jit_compile: bool = False,
    strategy: str = "auto",
    mixed_precision: str = "none",
    train_steps: int = 1000,
    batch_norm: str = "auto",
    arch_version: int | None = None,
) -> PretrainStep:
    """The fine-tune binary's training step (its classifier, FinetuneTask and `Trainer`; no checkpoint, no
    validation) from random init — what one step costs does not depend on the weights."""
    from advss_tf.config import AttackConfig
    from advss_tf.data import cifar10
    from advss_tf.models.classifier import ImageClassifier
    from advss_tf.tasks.finetune import FROZEN_PARTS, FinetuneTask, trainable_variables
    from advss_tf.training.finetuning import FinetuneConfig

    cfg = FinetuneConfig(
        model_dir="/tmp/unused",
        backbone=_backbone(backbone, arch_version),
        mode=mode,
        objective=objective,
        batch_size=batch_size,
        train_steps=train_steps,
        attack=AttackConfig(steps=attack_steps),
    )

    def build():
        model = ImageClassifier(cfg.backbone, cifar10.NUM_CLASSES, name="classifier")
        model.frozen_parts = frozenset(FROZEN_PARTS[mode])
        task = FinetuneTask(objective, cfg.attack, trades_beta=cfg.trades_beta, feature_dim=cfg.backbone.feature_dim)
        return task, model, trainable_variables(model, mode) + task.extra_variables()

    return _assemble(
        cfg, strategy, mixed_precision, batch_norm, jit_compile, build,
        attack_bn_train=cfg.attack.bn == "train", augmentation=dict(pad=4, flip=True),
    )  # fmt: skip
