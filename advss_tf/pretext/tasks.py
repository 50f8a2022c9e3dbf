"""Pretext tasks as the training loop sees them: model, input transform, attack, losses, export signatures.

A task is the only place that knows what its inputs and labels are; `advss_tf.training.loop` runs any of them
under a distribution strategy. The table `TASKS` is what `--task` accepts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advss_tf import summaries
from advss_tf.attacks import diversity
from advss_tf.attacks.joint_pgd import joint_pgd_linf
from advss_tf.attacks.pgd import cross_entropy, pgd_linf
from advss_tf.config import PretrainConfig
from advss_tf.errors import UsageError
from advss_tf.models.classifier import ImageClassifier
from advss_tf.models.ensemble import EnsembleModel
from advss_tf.models.selfie import SelfieModel
from advss_tf.pretext import jigsaw, rotation
from advss_tf.pretext import selfie as selfie_lib


def accuracy(labels, logits) -> tf.Tensor:
    """Per-example 0/1 correctness, float32."""
    return tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)), tf.float32)


class ClassificationPretextTask:
    """A pretext task that is image → class: Rotation (4 classes) and Jigsaw (31)."""

    def __init__(self, config: PretrainConfig, name: str, num_classes: int, transform: Callable, assets=None):
        self.config = config
        self.name = name
        self.num_classes = num_classes
        self._transform = transform
        self._assets = assets or {}

    def metric_names(self, adversarial: bool) -> tuple[str, ...]:
        names = ("loss", "clean_loss", "clean_accuracy")
        return names + (("adv_loss", "adv_accuracy") if adversarial else ())

    # -- inputs ---------------------------------------------------------------------------------------------------
    def transform(self, images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        del labels  # self-supervised: the class labels are never seen
        return self._transform(images, seed)

    # -- model ----------------------------------------------------------------------------------------------------
    def build_model(self) -> keras.Model:
        return ImageClassifier(self.config.backbone, self.num_classes, head_name=self.name, name=f"{self.name}_model")

    def extra_checkpoint_items(self) -> dict[str, Any]:
        """Non-model state that must match on restore (e.g. the jigsaw permutations)."""
        return {k: v for k, v in self._assets.items() if isinstance(v, tf.Variable)}

    # -- attack and losses (inside the replica step) ----------------------------------------------------------------
    def craft(self, model: keras.Model, batch: dict, seed: tf.Tensor, bn_training: bool) -> tf.Tensor:
        """PGD on the pretext loss of the already rotated / shuffled image."""
        attack = self.config.attack
        return pgd_linf(
            lambda z: model(z, training=bn_training),
            batch["inputs"],
            batch["labels"],
            eps=attack.eps,
            step_size=attack.step_size,
            steps=attack.steps,
            seed=seed,
        )

    def losses(self, model: keras.Model, batch: dict, adv: tf.Tensor | None) -> tuple[tf.Tensor, dict]:
        """Per-example training loss (0.5·(clean + adv) when adversarial) and per-example metrics."""
        labels = batch["labels"]
        clean_logits = model(batch["inputs"], training=True)
        clean = cross_entropy(labels, clean_logits)
        metrics = {"clean_loss": clean, "clean_accuracy": accuracy(labels, clean_logits)}
        if adv is None:
            return clean, {**metrics, "loss": clean}
        adv_logits = model(adv, training=True)
        adv_loss = cross_entropy(labels, adv_logits)
        loss = 0.5 * (clean + adv_loss)
        return loss, {**metrics, "adv_loss": adv_loss, "adv_accuracy": accuracy(labels, adv_logits), "loss": loss}

    # -- export ---------------------------------------------------------------------------------------------------
    def export_parts(self, model: ImageClassifier) -> dict[str, Any]:
        """Objects the export tracks by name: `finetune` restores `trunk` (and `stage4`) from them."""
        return {"trunk": model.trunk, "stage4": model.stage4, "head": model.head}

    def export_signatures(self, model: ImageClassifier) -> dict[str, Callable]:
        """image [N,32,32,3] in [0,1] → output functions, exported as SavedModel signatures."""
        return {
            "features": lambda images: {"features": model.features(images, training=False)},
            f"{self.name}_logits": lambda images: {"logits": model(images, training=False)},
        }

    def export_assets(self) -> dict[str, str]:
        """File name → text written next to the export's config (SPEC §10)."""
        return {
            f"{k}.json": json.dumps(np.asarray(v.numpy()).tolist()) for k, v in self.extra_checkpoint_items().items()
        }

    def export_info(self) -> dict[str, Any]:
        return {"task": self.name, "num_classes": self.num_classes, "parts": ["trunk", "stage4", "head"]}

    # -- pictures -------------------------------------------------------------------------------------------------
    def summary_images(self, batch: dict) -> dict[str, tf.Tensor]:
        return {f"{self.name}_inputs": batch["inputs"]}


def _rotation(config: PretrainConfig) -> ClassificationPretextTask:
    return ClassificationPretextTask(config, "rotation", rotation.NUM_CLASSES, rotation.rotation_transform)


def _jigsaw(config: PretrainConfig) -> ClassificationPretextTask:
    perms = jigsaw.make_permutations(config.jigsaw_permutations, config.seed)
    perms_var = tf.Variable(perms, trainable=False, name="jigsaw_permutations")
    prob = config.jigsaw_identity_prob

    def transform(images, seed):
        return jigsaw.jigsaw_transform(images, seed, perms, prob)

    return ClassificationPretextTask(config, "jigsaw", len(perms), transform, assets={"jigsaw_permutations": perms_var})


def _selfie_export_info(config: PretrainConfig) -> dict[str, Any]:
    """What an export records about Selfie's transformer and its `selfie_logits` signature."""
    return {
        "selfie": {
            "layers": config.selfie_layers,
            "heads": config.selfie_heads,
            "ff_dim": config.selfie_ff_dim,
            "dropout": config.selfie_dropout,
        },
        "selfie_logits_order": list(range(selfie_lib.NUM_PATCHES)),
        "selfie_logit_scale": config.selfie_scale,
    }


def selfie_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example Selfie loss: cross-entropy of each query (labels [B, 4], logits [B, 4, 4]) summed over queries."""
    return tf.reduce_sum(
        tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
        ),
        axis=1,
    )


def selfie_accuracy(logits: tf.Tensor) -> tf.Tensor:
    """Per-example fraction of the 4 queries answered right, float32 [B]."""
    labels = selfie_lib.query_labels(tf.shape(logits)[0])
    return tf.reduce_mean(accuracy(labels, logits), axis=1)


class SelfieTask:
    """Selfie (SPEC §5): predict which of 4 hidden patches belongs at each hidden position.

    The batch carries the whole (augmented) images and the batch's patch order; patching happens inside the model,
    so the attack perturbs the whole 32x32 image and its gradient reaches every patch.
    """

    name = "selfie"

    def __init__(self, config: PretrainConfig):
        self.config = config  # its selfie dimensions were checked against the trunk when it was made

    def metric_names(self, adversarial: bool) -> tuple[str, ...]:
        names = ("loss", "clean_loss", "clean_accuracy")
        return names + (("adv_loss", "adv_accuracy") if adversarial else ())

    def transform(self, images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        del labels  # self-supervised
        return selfie_lib.selfie_transform(images, seed)

    def build_model(self) -> SelfieModel:
        c = self.config
        return SelfieModel(
            c.backbone,
            c.selfie_layers,
            c.selfie_heads,
            c.selfie_ff_dim,
            c.selfie_dropout,
            logit_scale=c.selfie_scale,
            name="selfie_model",
        )

    def extra_checkpoint_items(self) -> dict[str, Any]:
        return {}

    def craft(self, model: SelfieModel, batch: dict, seed: tf.Tensor, bn_training: bool) -> tf.Tensor:
        """PGD on the Selfie loss of the whole image (before patching), with this batch's patch order."""
        attack = self.config.attack
        order = batch["order"][0]  # one order per batch, repeated per example so that it splits across replicas
        return pgd_linf(
            lambda z: model.selfie_logits(z, order, training=bn_training),
            batch["inputs"],
            selfie_lib.query_labels(tf.shape(batch["inputs"])[0]),
            eps=attack.eps,
            step_size=attack.step_size,
            steps=attack.steps,
            seed=seed,
            loss_fn=selfie_loss,
        )

    def losses(self, model: SelfieModel, batch: dict, adv: tf.Tensor | None) -> tuple[tf.Tensor, dict]:
        """Per-example loss (0.5·(clean + adv) when adversarial) and metrics; each loss sums the 4 queries."""
        order = batch["order"][0]
        labels = selfie_lib.query_labels(tf.shape(batch["inputs"])[0])
        clean_logits = model.selfie_logits(batch["inputs"], order, training=True)
        clean = selfie_loss(labels, clean_logits)
        metrics = {"clean_loss": clean, "clean_accuracy": selfie_accuracy(clean_logits)}
        if adv is None:
            return clean, {**metrics, "loss": clean}
        adv_logits = model.selfie_logits(adv, order, training=True)
        adv_loss = selfie_loss(labels, adv_logits)
        loss = 0.5 * (clean + adv_loss)
        return loss, {**metrics, "adv_loss": adv_loss, "adv_accuracy": selfie_accuracy(adv_logits), "loss": loss}

    def export_parts(self, model: SelfieModel) -> dict[str, Any]:
        """`trunk` (what `finetune` restores; Selfie has no stage 4) and the transformer head."""
        return {"trunk": model.trunk, "selfie_head": model.selfie_head}

    def export_signatures(self, model: SelfieModel) -> dict[str, Callable]:
        """features: pooled trunk output [N, C]; patch_features [N, 16, C]; selfie_logits with the canonical order."""
        return {
            "features": lambda images: {"features": model.features(images, training=False)},
            "patch_features": lambda images: {"patch_features": model.patch_vectors(images, training=False)},
            "selfie_logits": lambda images: {"logits": model(images, training=False)},
        }

    def export_assets(self) -> dict[str, str]:
        return {}

    def export_info(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "parts": ["trunk", "selfie_head"],
            **_selfie_export_info(self.config),
        }

    def summary_images(self, batch: dict) -> dict[str, tf.Tensor]:
        return {
            "selfie_inputs": batch["inputs"],
            "selfie_masked_inputs": selfie_lib.mask_targets(batch["inputs"], batch["order"][0]),
        }


ENSEMBLE_TASKS = ("selfie", "jigsaw", "rotation")  # the order of G's columns and of the attack's inputs
ENSEMBLE_PARTS = ("trunk", "rotation_stage4", "rotation_head", "jigsaw_stage4", "jigsaw_head", "selfie_head")


class EnsembleTask:
    """Selfie + Jigsaw + Rotation on one shared trunk, with the joint diversity-regularised attack (SPEC §5).

    Each step builds the three task inputs from the same clean batch: Selfie sees the image (and the batch's
    patch order), Jigsaw its shuffled version, Rotation its rotated version.
    """

    name = "ensemble"

    def __init__(self, config: PretrainConfig):
        self.config = config  # its selfie dimensions were checked against the trunk when it was made
        self.permutations = jigsaw.make_permutations(config.jigsaw_permutations, config.seed)
        self.permutations_var = tf.Variable(self.permutations, trainable=False, name="jigsaw_permutations")
        self.weight = float(config.diversity_weight)
        self._model: EnsembleModel | None = None

    def metric_names(self, adversarial: bool) -> tuple[str, ...]:
        kinds = ("clean_loss", "clean_accuracy") + (("adv_loss", "adv_accuracy") if adversarial else ())
        names = ("loss",) + tuple(f"{t}_{k}" for t in ENSEMBLE_TASKS for k in kinds)
        return names + (("diversity_h",) if adversarial and self.weight else ())

    def transform(self, images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        del labels
        selfie_seed, jigsaw_seed, rotation_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        jig = jigsaw.jigsaw_transform(images, jigsaw_seed, self.permutations, self.config.jigsaw_identity_prob)
        rot = rotation.rotation_transform(images, rotation_seed)
        return {
            **selfie_lib.selfie_transform(images, selfie_seed),
            "jigsaw_inputs": jig["inputs"],
            "jigsaw_labels": jig["labels"],
            "rotation_inputs": rot["inputs"],
            "rotation_labels": rot["labels"],
        }

    def build_model(self) -> EnsembleModel:
        c = self.config
        self._model = EnsembleModel(
            c.backbone,
            len(self.permutations),
            c.selfie_layers,
            c.selfie_heads,
            c.selfie_ff_dim,
            c.selfie_dropout,
            selfie_logit_scale=c.selfie_scale,
            rotation_classes=rotation.NUM_CLASSES,
            name="ensemble_model",
        )
        return self._model

    def extra_checkpoint_items(self) -> dict[str, Any]:
        return {"jigsaw_permutations": self.permutations_var}

    # -- the three tasks, in ENSEMBLE_TASKS order ------------------------------------------------------------------
    def _inputs(self, batch: dict) -> list[tf.Tensor]:
        return [batch["inputs"], batch["jigsaw_inputs"], batch["rotation_inputs"]]

    def _heads(self, model: EnsembleModel, batch: dict, training: bool) -> list[tuple[Callable, Callable, Callable]]:
        """Per task: (images → logits, logits → per-example loss, logits → per-example accuracy)."""
        order = batch["order"][0]  # one order per batch, repeated per example so that it splits across replicas
        selfie_labels = selfie_lib.query_labels(tf.shape(batch["inputs"])[0])
        jig, rot = batch["jigsaw_labels"], batch["rotation_labels"]
        return [
            (
                lambda x: model.selfie.selfie_logits(x, order, training=training),
                lambda z: selfie_loss(selfie_labels, z),
                selfie_accuracy,
            ),
            (lambda x: model.jigsaw(x, training=training), lambda z: cross_entropy(jig, z), lambda z: accuracy(jig, z)),
            (
                lambda x: model.rotation(x, training=training),
                lambda z: cross_entropy(rot, z),
                lambda z: accuracy(rot, z),
            ),
        ]

    def craft(self, model: EnsembleModel, batch: dict, seed: tf.Tensor, bn_training: bool) -> dict[str, tf.Tensor]:
        """Joint PGD: one perturbation per task input, each step ascending L_task + λ·h (h summed over the batch)."""
        attack = self.config.attack
        heads = self._heads(model, batch, bn_training)
        advs = joint_pgd_linf(
            [lambda x, f=f, loss=loss: loss(f(x)) for f, loss, _ in heads],
            self._inputs(batch),
            eps=attack.eps,
            step_size=attack.step_size,
            steps=attack.steps,
            seed=seed,
            regularizer=lambda grads: tf.reduce_sum(diversity.per_example_log_det(grads)),
            regularizer_weight=self.weight,
        )
        return dict(zip(ENSEMBLE_TASKS, advs, strict=True))

    def losses(self, model: EnsembleModel, batch: dict, adv: dict | None) -> tuple[tf.Tensor, dict]:
        """Per-example (3 clean + 3 adversarial task losses)/6 + λ·h_b, h_b on the final adversarial inputs.

        Standard (no attack): the mean of the three clean losses. λ = 0: exactly the plain six-loss objective (h is
        then neither computed nor reported).
        """
        heads = self._heads(model, batch, training=True)
        metrics, clean_losses = {}, []
        for name, x, (logits_fn, loss_fn, acc_fn) in zip(ENSEMBLE_TASKS, self._inputs(batch), heads, strict=True):
            logits = logits_fn(x)
            clean_losses.append(loss_fn(logits))
            metrics[f"{name}_clean_loss"], metrics[f"{name}_clean_accuracy"] = clean_losses[-1], acc_fn(logits)
        if adv is None:
            loss = tf.add_n(clean_losses) / 3.0
            return loss, {**metrics, "loss": loss}

        adv_logits = {}  # filled by the loss functions, for the accuracies

        def adv_loss_fn(name, logits_fn, loss_fn):
            def fn(x):
                adv_logits[name] = logits_fn(x)
                return loss_fn(adv_logits[name])

            return fn

        fns = [adv_loss_fn(name, f, loss) for name, (f, loss, _) in zip(ENSEMBLE_TASKS, heads, strict=True)]
        adv_inputs = [adv[name] for name in ENSEMBLE_TASKS]
        if self.weight:
            # Nested tape: the input gradients stay differentiable, so λ·h reaches the weights (double backprop).
            adv_losses, grads = diversity.input_gradients(fns, adv_inputs)
            h = diversity.per_example_log_det(grads)
        else:
            adv_losses, h = [fn(x) for fn, x in zip(fns, adv_inputs, strict=True)], None
        for name, loss_k, (_, _, acc_fn) in zip(ENSEMBLE_TASKS, adv_losses, heads, strict=True):
            metrics[f"{name}_adv_loss"], metrics[f"{name}_adv_accuracy"] = loss_k, acc_fn(adv_logits[name])
        loss = (tf.add_n(clean_losses) + tf.add_n(adv_losses)) / 6.0
        if h is not None:
            loss += self.weight * h
            metrics["diversity_h"] = h
        return loss, {**metrics, "loss": loss}

    # -- export ---------------------------------------------------------------------------------------------------
    def export_parts(self, model: EnsembleModel) -> dict[str, Any]:
        """`trunk` (what `finetune` restores; no part is called `stage4`: each head owns one) and every head."""
        return dict(model.checkpoint_items)

    def export_signatures(self, model: EnsembleModel) -> dict[str, Callable]:
        return {
            "features": lambda images: {"features": model.features(images, training=False)},
            "rotation_logits": lambda images: {"logits": model.rotation(images, training=False)},
            "jigsaw_logits": lambda images: {"logits": model.jigsaw(images, training=False)},
            "selfie_logits": lambda images: {"logits": model.selfie(images, training=False)},
        }

    def export_assets(self) -> dict[str, str]:
        return {"jigsaw_permutations.json": json.dumps(np.asarray(self.permutations_var.numpy()).tolist())}

    def export_info(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "parts": list(ENSEMBLE_PARTS),
            "jigsaw_classes": len(self.permutations),
            **_selfie_export_info(self.config),
            "diversity_weight": self.weight,
        }

    def summary_images(self, batch: dict) -> dict[str, tf.Tensor]:
        """The three task inputs (Selfie's hidden patches blanked) and, once a model exists, clean | adv | δ grids."""
        images = {
            "selfie_masked_inputs": selfie_lib.mask_targets(batch["inputs"], batch["order"][0]),
            "jigsaw_inputs": batch["jigsaw_inputs"],
            "rotation_inputs": batch["rotation_inputs"],
        }
        if self._model is not None:
            adv = self.craft(self._model, batch, tf.constant([self.config.seed, 7], tf.int64), False)
            for name, clean in zip(ENSEMBLE_TASKS, self._inputs(batch), strict=True):
                grid = summaries.adversarial_grid(clean, adv[name], self.config.attack.eps)
                images[f"adversarial/{name}/clean|adv|perturbation"] = grid
        return images


TASKS: dict[str, Callable[[PretrainConfig], Any]] = {
    "rotation": _rotation,
    "jigsaw": _jigsaw,
    "selfie": SelfieTask,
    "ensemble": EnsembleTask,
}

# Selfie's augmentation: 2-pixel padding crop, no flip (SPEC §3). The ensemble uses the reference ensemble script's
# crop 4 + flip for the clean batch all three task inputs come from.
AUGMENTATION = {
    "rotation": dict(pad=4, flip=True),
    "jigsaw": dict(pad=4, flip=True),
    "selfie": dict(pad=2, flip=False),
    "ensemble": dict(pad=4, flip=True),
}


def build_task(config: PretrainConfig):
    if config.task not in TASKS:
        raise UsageError(f"unknown task {config.task!r}; valid: {', '.join(TASKS)}")
    return TASKS[config.task](config)
