"""The ensemble pretext task (SPEC §5): Selfie + Jigsaw + Rotation on one trunk, with the joint diversity-regularised
attack."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from advss_tf import summaries
from advss_tf.attacks import diversity
from advss_tf.attacks.joint_pgd import joint_pgd_linf
from advss_tf.attacks.pgd import cross_entropy
from advss_tf.config import PretrainConfig
from advss_tf.models.ensemble import EnsembleModel
from advss_tf.models.layers import preferred_batch_norm_layer
from advss_tf.pretext import jigsaw, rotation
from advss_tf.pretext import selfie as selfie_lib
from advss_tf.tasks.base import accuracy
from advss_tf.tasks.selfie import _selfie_export_info, selfie_accuracy, selfie_loss

ENSEMBLE_TASKS = ("selfie", "jigsaw", "rotation")  # the order of G's columns and of the attack's inputs
ENSEMBLE_PARTS = ("trunk", "rotation_stage4", "rotation_head", "jigsaw_stage4", "jigsaw_head", "selfie_head")


class EnsembleTask:
    """Selfie + Jigsaw + Rotation on one shared trunk, with the joint diversity-regularised attack (SPEC §5).

    Each step builds the three task inputs from the same clean batch: Selfie sees the image (and the batch's
    patch order), Jigsaw its shuffled version, Rotation its rotated version.
    """

    name = "ensemble"

    def __init__(self, config: PretrainConfig, permutations: np.ndarray | None = None):
        self.config = config  # its selfie dimensions were checked against the trunk when it was made
        # `permutations` (int [classes, 16], row 0 the identity): an imported model's own set instead of the seed's.
        if permutations is None:
            self.permutations = jigsaw.make_permutations(config.jigsaw_permutations, config.seed)
        else:
            self.permutations = np.asarray(permutations, np.int32)
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
        # Keras' BatchNormalization: the same speed here, less memory under the diversity term's double backprop.
        with preferred_batch_norm_layer("keras"):
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
