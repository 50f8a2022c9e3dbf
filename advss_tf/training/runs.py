"""What a pretraining and a fine-tuning run share: the training images and their split, the precision policy, the
optimizer and its schedule, the run's step counter, and the checked restore of the latest checkpoint."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from advss_tf.data import datasets, pipeline
from advss_tf.errors import UsageError
from advss_tf.training.schedules import LearningRate


def set_precision(mode: str) -> None:
    """Keras global dtype policy; float16 also wraps the optimizer in loss scaling (see `make_optimizer`)."""
    keras.mixed_precision.set_dtype_policy(
        {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}[mode]
    )


def make_optimizer(cfg, steps_per_epoch: int, total_steps: int, mixed_precision: str):
    opt_cfg = cfg.optimizer
    lr = LearningRate(
        opt_cfg.schedule,
        opt_cfg.learning_rate,
        total_steps,
        steps_per_epoch,
        warmup_steps=opt_cfg.warmup_steps,
        warmup_start_lr=opt_cfg.warmup_start_lr,
        final_lr=opt_cfg.final_lr,
        boundaries_epochs=opt_cfg.boundaries_epochs,
        decay_factor=opt_cfg.decay_factor,
    )
    opt = keras.optimizers.SGD(learning_rate=lr, momentum=opt_cfg.momentum, nesterov=opt_cfg.nesterov)
    if mixed_precision == "float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt, lr


def load_training_images(
    cfg, purpose: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, datasets.DatasetInfo]:
    """(train images, train labels, validation images, validation labels, what they hold) from the training split.

    Args:
      cfg: a run config (its `data`, `seed`, `train_fraction`).
      purpose: set when the run needs labels (fine-tuning): an unlabelled source is then a UsageError.
    """
    split = datasets.load(cfg.data, cfg.data.train_split)
    if purpose:
        datasets.require_labelled(split, cfg.data, purpose)
    images, labels = split.images, split.labels
    if len(images) < 2:
        raise UsageError(f"{datasets.describe(cfg.data)} has {len(images)} training image(s); training needs more")
    train_idx, val_idx = pipeline.train_val_split(labels, cfg.seed)
    train_idx = pipeline.class_balanced_subset(labels, train_idx, cfg.train_fraction, cfg.seed)
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx], split.info


def new_step_counter() -> tf.Variable:
    """The run's step (int64, checkpointed, advanced by the loop): start step, data position and checkpoint numbers.

    Not the optimizer's `iterations`: under float16 loss scaling that one stays put on the steps it skips.
    """
    return tf.Variable(0, dtype=tf.int64, trainable=False, name="step")


def restore_or_init(manager: tf.train.CheckpointManager, checkpoint: tf.train.Checkpoint, expected: dict) -> bool:
    """Restores the latest checkpoint (inside the strategy scope, so optimizer slots are mirrored)."""
    latest = manager.latest_checkpoint
    if not latest:
        return False
    try:
        checkpoint.restore(latest).assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        raise UsageError(f"checkpoint {latest} does not fit this task/model: {str(e).splitlines()[0][:200]}") from e
    for name, (var, value) in expected.items():
        if not np.array_equal(var.numpy(), value):
            raise UsageError(f"checkpoint {latest} was made with other {name}; use another --model_dir")
    return True
