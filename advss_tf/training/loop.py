"""The distributed custom training loop: attack and update inside the replica step, `steps_per_loop` steps per
host call, checkpoints, TensorBoard, progress bar, resume, SIGTERM/SIGINT and the NaN guard (SPEC §11-13)."""

from __future__ import annotations

import math
import signal
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from advss_tf import faults, summaries
from advss_tf.training import cluster


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, gradients or weights); the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was saved."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved, re-run the command to resume")
        self.signum = signum


class Trainer:
    """One training step on every replica, and the host loop that runs several of them in one `tf.function`.

    The task supplies `craft` (the attack, run outside the gradient tape so the tape does not record the PGD
    iterations) and `losses` (per-example losses and metrics). Per-example losses are reduced with
    `compute_average_loss` over the global batch: `apply_gradients` sums the replicas' gradients, so each replica
    contributes its share of the global mean.
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        task: Any,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        *,
        global_batch_size: int,
        weight_decay: float,
        adversarial: bool,
        attack_bn_train: bool,
        jit_compile: bool = False,
        trainable_variables: list | None = None,
        step_counter: tf.Variable | None = None,
    ):
        self.strategy = strategy
        self.task = task
        self.model = model
        self.optimizer = optimizer
        self.global_batch_size = global_batch_size
        self.weight_decay = weight_decay
        self.adversarial = adversarial
        self.attack_bn_train = attack_bn_train
        self.variables = trainable_variables if trainable_variables is not None else model.trainable_variables
        self.metric_names = tuple(task.metric_names(adversarial))
        # The run's own step (int64, checkpointed): LossScaleOptimizer.iterations does not advance on the steps it
        # skips for non-finite gradients, so it cannot say where the data stream and the checkpoints are.
        self.step_counter = step_counter
        self.nonfinite_steps = 0  # of the last `train` call: steps whose gradients or updated weights were not finite
        self._step_fn = tf.function(self.replica_step, jit_compile=True) if jit_compile else self.replica_step
        self._loop = tf.function(self._host_loop)

    def replica_step(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Attack, loss, gradients and update for this replica's slice; returns per-replica metric sums."""
        seed = batch["noise_seed"][0]  # distinct per replica: row i carries (step seed, i)
        adv = self.task.craft(self.model, batch, seed, self.attack_bn_train) if self.adversarial else None
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            per_example, metrics = self.task.losses(self.model, batch, adv)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
            if self.weight_decay:
                # Coupled L2 as PyTorch's SGD weight_decay (grad += wd·w) on every parameter; the gradients of all
                # replicas are summed, so each adds 1/replicas of it.
                l2 = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in self.variables])
                loss += self.weight_decay * l2 / replicas
            scaled = self.optimizer.scale_loss(loss) if hasattr(self.optimizer, "scale_loss") else loss
        grads = tape.gradient(scaled, self.variables)
        self.optimizer.apply_gradients(zip(grads, self.variables))
        sums = {k: tf.reduce_sum(tf.cast(metrics[k], tf.float32)) for k in self.metric_names}
        sums["count"] = tf.cast(tf.shape(per_example)[0], tf.float32)
        sums["nonfinite"] = 1.0 - tf.cast(self._update_finite(grads), tf.float32)
        return sums

    def _update_finite(self, grads) -> tf.Tensor:
        """Whether this step's gradients and the weights after the update are all finite (the losses can be finite
        while a gradient is not, e.g. tf.norm at 0). Under loss scaling the optimizer itself skips non-finite scaled
        gradients, so only the weights are checked there."""
        checked = list(self.variables)
        if not hasattr(self.optimizer, "scale_loss"):
            checked += [g for g in grads if g is not None]
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in checked])

    def _host_loop(self, iterator, steps: tf.Tensor) -> dict[str, tf.Tensor]:
        totals = {k: tf.constant(0.0) for k in (*self.metric_names, "count", "nonfinite")}
        for _ in tf.range(steps):
            out = self.strategy.run(self._step_fn, args=(next(iterator),))
            totals = {
                k: totals[k] + self.strategy.reduce(tf.distribute.ReduceOp.SUM, out[k], axis=None) for k in totals
            }
            if self.step_counter is not None:
                self.step_counter.assign_add(1)
        return totals

    def train(self, iterator, steps: int) -> dict[str, float]:
        """Runs `steps` steps; returns the mean of each metric over them."""
        totals = self._loop(iterator, tf.constant(steps, tf.int32))
        self.nonfinite_steps = int(totals["nonfinite"].numpy())
        count = float(totals["count"].numpy())
        return {k: float(totals[k].numpy()) / count for k in self.metric_names}


class SignalGuard:
    """Turns SIGTERM/SIGINT into a flag the host loop checks between loops (then it checkpoints and exits)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        logging.warning("signal %d: saving a checkpoint after the current loop", signum)

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        return False


def run_loop(
    trainer: Trainer,
    iterator,
    *,
    start_step: int,
    total_steps: int,
    manager: tf.train.CheckpointManager,
    writer: tf.summary.SummaryWriter,
    steps_per_loop: int,
    checkpoint_every: int,
    image_summary_every: int,
    image_fn=None,
    lr_fn=None,
    quiet: bool = False,
) -> dict[str, float]:
    """The host loop from `start_step` to `total_steps`; returns the metrics of the last loop.

    Raises:
      TrainingError: on a non-finite loss, gradient or updated weight (nothing is saved after it).
      Interrupted: after saving a checkpoint, on SIGTERM/SIGINT.
    """
    step = start_step
    bar = None if quiet else keras.utils.Progbar(total_steps, stateful_metrics=[*trainer.metric_names, "img/s"])
    last: dict[str, float] = {}
    with SignalGuard() as guard:
        if image_fn is not None and step == 0:
            with writer.as_default(step=step):
                image_fn()
        while step < total_steps:
            n = min(steps_per_loop, total_steps - step, checkpoint_every - step % checkpoint_every)
            t0 = time.perf_counter()
            last = trainer.train(iterator, n)
            elapsed = time.perf_counter() - t0
            if trainer.nonfinite_steps or not all(math.isfinite(v) for v in last.values()):
                # Every checkpoint so far was saved after a loop that passed this check: the latest one is good.
                what = "gradients or weights" if trainer.nonfinite_steps else "loss"
                kept = manager.latest_checkpoint or "none (no checkpoint was written yet)"
                raise TrainingError(
                    f"non-finite {what} at steps {step + 1}-{step + n} ({_fmt(last)}); the last good checkpoint is "
                    f"{kept}"
                )
            step += n
            images_per_sec = n * trainer.global_batch_size / elapsed
            with writer.as_default(step=step):
                for k, v in last.items():
                    tf.summary.scalar(f"train/{k}", v)
                tf.summary.scalar("train/images_per_sec", images_per_sec)
                tf.summary.scalar("train/step_time_sec", elapsed / n)
                if lr_fn is not None:
                    tf.summary.scalar("train/learning_rate", lr_fn(step))
                if image_fn is not None and step % image_summary_every < n:
                    image_fn()
            if bar is not None:
                bar.update(step, values=[*last.items(), ("img/s", images_per_sec)])
            elif step % checkpoint_every == 0 or step == total_steps:
                logging.info("step %d/%d %s %.1f img/s", step, total_steps, _fmt(last), images_per_sec)
            faults.pause("train")  # test-only (advss_tf/faults.py); nothing when unset
            # A signal on any worker stops all of them at this step (one collective under multi-worker).
            signum = cluster.agree_signal(trainer.strategy, guard.signum)
            if step % checkpoint_every == 0 or step == total_steps or signum is not None:
                manager.save(checkpoint_number=step, options=faults.checkpoint_options())
                writer.flush()
                if signum is None:  # a signal that arrived during the save stops the run at this checkpoint
                    signum = cluster.agree_signal(trainer.strategy, guard.signum)
            if signum is not None:
                raise Interrupted(signum, step)
    writer.flush()
    return last


def seed_generator_states(*models: keras.Model) -> list:
    """The state variables of the Keras SeedGenerators in `models` (Dropout, MultiHeadAttention's dropout).

    Keras keeps them outside `weights` and tf.train.Checkpoint does not find them through the model, so a resumed
    run would replay the dropout masks from step 0 unless the checkpoint holds them explicitly.
    """
    weights = {id(w) for m in models for w in m.weights}
    return [v for m in models for v in m.variables if id(v) not in weights]


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def steps_for(epochs: float, train_steps: int, steps_per_epoch: int) -> int:
    """Total optimisation steps: `train_steps` when given, else ceil(epochs · steps_per_epoch)."""
    return int(train_steps) if train_steps > 0 else int(np.ceil(epochs * steps_per_epoch))


__all__ = ["Trainer", "run_loop", "TrainingError", "Interrupted", "steps_for", "seed_generator_states", "summaries"]
