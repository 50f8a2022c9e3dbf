"""Learning-rate rules as small pure functions of the step (tested in tests/test_schedules.py), and the Keras
schedule that wraps them for the optimizer."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from advss_tf.config import SCHEDULES


def cosine_lr(step, total_steps: int, base_lr: float, final_lr: float):
    """Per-step cosine annealing from `base_lr` to `final_lr` over `total_steps` (the reference's LambdaLR)."""
    progress = tf.minimum(tf.cast(step, tf.float32) / float(max(total_steps, 1)), 1.0)
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + tf.cos(math.pi * progress))


def step_decay_lr(step, steps_per_epoch: int, base_lr: float, boundaries_epochs: tuple[int, ...], factor: float):
    """`base_lr` × factor^k after the k-th boundary epoch (fine-tuning: ×0.1 at epochs 60 and 80)."""
    epoch = tf.cast(step, tf.float32) / float(steps_per_epoch)
    k = tf.add_n([tf.cast(epoch >= float(b), tf.float32) for b in boundaries_epochs]) if boundaries_epochs else 0.0
    return base_lr * tf.pow(factor, k)


def warmup_lr(step, warmup_steps: int, start_lr: float, peak_lr: float):
    """Linear warm-up start → peak over `warmup_steps` steps, then held at the peak (the reference's warmup_lr)."""
    frac = tf.cast(step, tf.float32) / float(max(warmup_steps, 1))
    return tf.minimum(start_lr + frac * (peak_lr - start_lr), peak_lr)


def warmup_cosine_lr(position, total: float, warmup: float, base_lr: float, final_lr: float, offset: float = 0.0):
    """ACL's `cosine_annealing` (ACL train_simCLR.py:34-42; DynACL train_DynACL.py:465-474): at `position` u,
    `base_lr`·(u + offset)/warmup while u < warmup, then cosine from `base_lr` to `final_lr` over (u − warmup) /
    (total − warmup). ACL and AIR step it per step before each update (u = step + 1, offset 0); DynACL per epoch
    (u = the 0-based epoch, offset 1: its warm-up reads (step + 1) / warmup_steps)."""
    u = tf.cast(position, tf.float32)
    warm = base_lr * (u + offset) / float(max(warmup, 1e-12))
    progress = (u - warmup) / float(max(total - warmup, 1e-12))
    cosine = final_lr + (base_lr - final_lr) * 0.5 * (1.0 + tf.cos(math.pi * progress))
    return tf.where(u < warmup, warm, cosine)


@keras.saving.register_keras_serializable(package="advss_tf")
class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """The schedule of a run: `kind` after an epoch-0 warm-up.

    The reference overrides the scheduler during epoch 0 with the warm-up (0.01 → lr over `warmup_steps`, then lr
    for the rest of the epoch); after epoch 0 the main schedule applies at the step's own value.
    """

    def __init__(
        self,
        kind: str,
        base_lr: float,
        total_steps: int,
        steps_per_epoch: int,
        warmup_steps: int = 0,
        warmup_start_lr: float = 0.01,
        final_lr: float = 1e-6,
        boundaries_epochs: tuple[int, ...] = (),
        decay_factor: float = 0.1,
        warmup_epochs: float = 0.0,
    ):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
        self.kind, self.base_lr, self.total_steps, self.steps_per_epoch = kind, base_lr, total_steps, steps_per_epoch
        self.warmup_steps, self.warmup_start_lr, self.final_lr = warmup_steps, warmup_start_lr, final_lr
        self.boundaries_epochs, self.decay_factor = tuple(boundaries_epochs), decay_factor
        self.warmup_epochs = warmup_epochs

    def main(self, step):
        if self.kind == "cosine":
            return cosine_lr(step, self.total_steps, self.base_lr, self.final_lr)
        if self.kind == "warmup_cosine":  # per step, as ACL / AIR's LambdaLR stepped before every update
            spe = self.steps_per_epoch
            return warmup_cosine_lr(
                tf.cast(step, tf.float32) + 1.0, self.total_steps, self.warmup_epochs * spe, self.base_lr, self.final_lr
            )
        if self.kind == "warmup_cosine_epochs":  # per epoch, as DynACL's LambdaLR stepped after every epoch
            epoch = tf.math.floor(tf.cast(step, tf.float32) / float(self.steps_per_epoch))
            epochs = self.total_steps / self.steps_per_epoch
            return warmup_cosine_lr(epoch, epochs, self.warmup_epochs, self.base_lr, self.final_lr, offset=1.0)
        if self.kind == "step":
            return step_decay_lr(step, self.steps_per_epoch, self.base_lr, self.boundaries_epochs, self.decay_factor)
        return tf.constant(self.base_lr, tf.float32)

    def __call__(self, step):
        main = self.main(step)
        if self.warmup_steps <= 0:
            return main
        in_epoch0 = tf.cast(step, tf.float32) < float(self.steps_per_epoch)
        return tf.where(in_epoch0, warmup_lr(step, self.warmup_steps, self.warmup_start_lr, self.base_lr), main)

    def get_config(self):
        return dict(
            kind=self.kind,
            base_lr=self.base_lr,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            warmup_steps=self.warmup_steps,
            warmup_start_lr=self.warmup_start_lr,
            final_lr=self.final_lr,
            boundaries_epochs=self.boundaries_epochs,
            decay_factor=self.decay_factor,
            warmup_epochs=self.warmup_epochs,
        )
