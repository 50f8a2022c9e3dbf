"""The Selfie pretext task (SPEC §5): which hidden patch belongs at each hidden position."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from advss_tf.attacks.pgd import pgd_linf
from advss_tf.config import PretrainConfig
from advss_tf.models.selfie import SelfieModel
from advss_tf.pretext import selfie as selfie_lib
from advss_tf.tasks.base import accuracy


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
