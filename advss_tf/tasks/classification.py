"""The classification pretext tasks, image → class: Rotation (4 classes) and Jigsaw (31)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advss_tf.attacks.pgd import cross_entropy, pgd_linf
from advss_tf.config import PretrainConfig
from advss_tf.models.classifier import ImageClassifier
from advss_tf.pretext import jigsaw, rotation
from advss_tf.tasks.base import accuracy


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
        """image [N,H,W,3] in [0,1] → output functions, exported as SavedModel signatures."""
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


def rotation_task(config: PretrainConfig) -> ClassificationPretextTask:
    """Rotation: predict which of 0/90/180/270° the image was turned by."""
    return ClassificationPretextTask(config, "rotation", rotation.NUM_CLASSES, rotation.rotation_transform)


def jigsaw_task(config: PretrainConfig, permutations: np.ndarray | None = None) -> ClassificationPretextTask:
    """Jigsaw: predict which of the seed's permutations (identity included) shuffled the patches.

    `permutations` (int [classes, 16], row 0 the identity) replaces the seed's set: an imported model's own.
    """
    if permutations is None:
        perms = jigsaw.make_permutations(config.jigsaw_permutations, config.seed)
    else:
        perms = np.asarray(permutations, np.int32)
    perms_var = tf.Variable(perms, trainable=False, name="jigsaw_permutations")
    prob = config.jigsaw_identity_prob

    def transform(images, seed):
        return jigsaw.jigsaw_transform(images, seed, perms, prob)

    return ClassificationPretextTask(config, "jigsaw", len(perms), transform, assets={"jigsaw_permutations": perms_var})
