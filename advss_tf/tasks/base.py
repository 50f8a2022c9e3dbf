"""The task protocol, written once: what the training loop and the two runs ask of a task, and when.

A task is the only place that knows what its inputs and labels are. `advss_tf.training.loop.Trainer` runs any
`Task` under a distribution strategy; `advss_tf.training.pretraining.run` builds a `PretrainingTask` from the
table (`advss_tf.tasks.table`) and exports it; `advss_tf.training.finetuning.run` builds a `FinetuningTask` around
the classifier it restored. These are `typing.Protocol`s: a task implements the methods, it does not inherit
(tests/test_tasks.py checks that every task in the table and the fine-tuning task do).

Tensors in a batch dict are split along their first axis across replicas, so whatever a task needs per batch
(Selfie's patch order) travels repeated per example. All randomness comes in as stateless seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import keras
import tensorflow as tf


@runtime_checkable
class Task(Protocol):
    """What `Trainer` calls. `transform` runs in the tf.data pipeline; `craft` and `losses` in the replica step."""

    def metric_names(self, adversarial: bool) -> tuple[str, ...]:
        """The keys of the metrics dict `losses` returns (adversarial: the run attacks), in TensorBoard order.

        Called once, when the `Trainer` is made; the loop reports each as its mean over the examples it ran.
        """

    def transform(self, images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """Augmented images float32 [B, H, W, 3] in [0, 1], class labels int [B], a stateless seed [2] → the batch.

        Pure TF, traced inside the tf.data pipeline (no NumPy or Python randomness); the returned dict (e.g.
        {'inputs', 'labels'}) is what `craft` and `losses` receive, with the loop's `noise_seed` added.

        A task whose inputs change with training's progress (DynACL's augmentation strength, tasks/contrastive.py)
        also defines `step_transform(images, labels, seed, step, steps_per_epoch)`, which the training pipeline
        then calls instead, with the global step (int64 scalar); `transform` stays what step 0 gives.
        """

    def craft(self, model: keras.Model, batch: dict, seed: tf.Tensor, bn_training: bool) -> Any:
        """The adversarial inputs of this replica's batch: a tensor, or a dict of tensors (one per task input).

        Called in the replica step before the gradient tape, only when the run is adversarial; `seed` [2] is distinct
        per replica and step, `bn_training` is --attack_bn == train. Also called on a fixed probe batch for the
        TensorBoard pictures (pretraining, fine-tuning). The result must not carry gradients (tf.stop_gradient).
        """

    def losses(self, model: keras.Model, batch: dict, adv: Any) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """(per-example training loss [B], per-example metrics {name: [B]} under `metric_names`' keys).

        Called inside the gradient tape with `craft`'s result (None when the run is standard); the loop reduces
        with tf.nn.compute_average_loss over the global batch and adds the weight decay.
        """


@runtime_checkable
class PretrainingTask(Task, Protocol):
    """A pretext task: everything `pretraining.run` needs besides the loop. Made by `table.build_task(config)`."""

    name: str  # the --task name; also the export info's "task"

    def build_model(self) -> keras.Model:
        """The model, built from the config; called once, inside the strategy scope."""

    def extra_checkpoint_items(self) -> dict[str, Any]:
        """Name → non-model state saved in every checkpoint that must match on resume (the jigsaw permutations).

        Called once after `build_model`; the run refuses to resume when a restored value differs.
        """

    def export_parts(self, model: keras.Model) -> dict[str, Any]:
        """Name → object the export tracks (SPEC §10): `trunk` always (what `finetune` restores), `stage4` when the
        task has a single one, and the task's heads. Called once, at the end of the run."""

    def export_signatures(self, model: keras.Model) -> dict[str, Callable]:
        """Signature name → function of images float32 [N, H, W, 3] in [0, 1] → {output name: tensor}.

        `features` ([N, D]) is required; the task adds `<task>_logits` and the like. Called once, at export.
        """

    def export_assets(self) -> dict[str, str]:
        """File name → text written into the export's assets/ (e.g. jigsaw_permutations.json). Called at export."""

    def export_info(self) -> dict[str, Any]:
        """What assets/advss_export.json records about the task: at least `task` and `parts`; the run adds the
        format, backbone and config. Called at export."""

    def summary_images(self, batch: dict) -> dict[str, tf.Tensor]:
        """Name → images [N, H, W, C] in [0, 1] to show in TensorBoard for the (transformed) probe batch.

        Called every --image_summary_every steps, outside the replica step, in eager mode.
        """


@runtime_checkable
class FinetuningTask(Task, Protocol):
    """The fine-tuning objective (`tasks.finetune.FinetuneTask`): the model is the run's `ImageClassifier`, so the
    task builds and exports nothing; it may own extra trainable state (the rotation auxiliary head)."""

    @property
    def adversarial(self) -> bool:
        """Whether the objective attacks (adversarial, TRADES) and the `Trainer` calls `craft`."""

    def extra_variables(self) -> list[tf.Variable]:
        """Trainable variables outside the classifier, trained with it; called once, before the `Trainer` is made."""

    def checkpoint_items(self) -> dict[str, Any]:
        """Name → the task's own trackables (the rotation head), saved in every checkpoint next to the model."""


def accuracy(labels, logits) -> tf.Tensor:
    """Per-example 0/1 correctness, float32."""
    return tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)), tf.float32)
