"""Fine-tuning objectives as the training loop sees them (the `FinetuningTask` protocol of `advss_tf.tasks.base`).

- standard: cross-entropy on clean images.
- adversarial: cross-entropy on PGD-10 examples only (the reference's `finetune/main.py`).
- trades: CE(clean) + β·KL(p_clean ‖ p_adv), the attack ascending the KL (Zhang et al. 2019).
- an optional rotation auxiliary head (Hendrycks et al. 2019, the paper's one-shot baseline): each batch of B images
  becomes 5B inputs — the images for the classifier, and the images rotated by 0/90/180/270° for a 4-way rotation
  head on the same pooled features; loss = CE(classes) + w·CE(rotations), and the attack ascends both.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from advss_tf.attacks.pgd import cross_entropy, pgd_linf
from advss_tf.config import FINETUNE_MODES, FINETUNE_OBJECTIVES, AttackConfig
from advss_tf.errors import UsageError
from advss_tf.models.classifier import ImageClassifier
from advss_tf.pretext import rotation
from advss_tf.tasks.base import accuracy

OBJECTIVES = FINETUNE_OBJECTIVES  # the names live with FinetuneConfig, which checks them (config sits below tasks)
MODES = FINETUNE_MODES
# Parts that do not train (and run with inference-mode BatchNorm) in each mode.
FROZEN_PARTS = {"linear": ("trunk", "stage4"), "partial": ("trunk",), "full": ()}


def kl_divergence(clean_logits: tf.Tensor, adv_logits: tf.Tensor) -> tf.Tensor:
    """Per-example KL(p_clean ‖ p_adv) from logits (PyTorch's KLDivLoss(log_softmax(adv), softmax(clean)) per row)."""
    log_p = tf.nn.log_softmax(tf.cast(clean_logits, tf.float32))
    return tf.reduce_sum(tf.exp(log_p) * (log_p - tf.nn.log_softmax(tf.cast(adv_logits, tf.float32))), axis=-1)


def trainable_variables(model: ImageClassifier, mode: str) -> list[tf.Variable]:
    """The variables a mode trains: Dense only (linear), stage 4 + Dense (partial), everything (full)."""
    if mode not in FROZEN_PARTS:
        raise UsageError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    frozen = {id(v) for part in FROZEN_PARTS[mode] for v in getattr(model, part).variables}
    return [v for v in model.trainable_variables if id(v) not in frozen]


def rotation_labels(batch_size: tf.Tensor) -> tf.Tensor:
    """[0]*B + [1]*B + [2]*B + [3]*B: the labels of `rotation_copies`."""
    return tf.repeat(tf.range(rotation.NUM_CLASSES, dtype=tf.int32), batch_size)


def rotation_copies(images: tf.Tensor) -> tf.Tensor:
    """images [B, S, S, C] → [4B, S, S, C]: blocks rotated counter-clockwise by 0/90/180/270°, in that order."""
    return tf.concat([tf.image.rot90(images, k) for k in range(rotation.NUM_CLASSES)], axis=0)


class FinetuneTask:
    """Loss and attack of one fine-tuning objective, for `advss_tf.training.loop.Trainer`.

    Args:
      objective: one of OBJECTIVES.
      attack: the training attack (PGD; steps, ε, step size on the [0, 1] pixel scale).
      trades_beta: β of TRADES (objective "trades" only).
      aux_rotation_weight: > 0 adds the rotation auxiliary head with this loss weight (Hendrycks et al.: 0.5).
      feature_dim: width of the pooled features the rotation head reads.
    """

    def __init__(
        self,
        objective: str,
        attack: AttackConfig,
        *,
        trades_beta: float = 6.0,
        aux_rotation_weight: float = 0.0,
        feature_dim: int | None = None,
    ):
        if objective not in OBJECTIVES:
            raise UsageError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
        if trades_beta < 0:
            raise UsageError(f"--trades_beta must be >= 0, got {trades_beta}")
        if aux_rotation_weight < 0:
            raise UsageError(f"--aux_rotation_weight must be >= 0, got {aux_rotation_weight}")
        if aux_rotation_weight > 0 and objective == "trades":
            raise UsageError("--aux_rotation_weight goes with --objective=adversarial or standard, not trades")
        self.objective = objective
        self.attack = attack
        self.trades_beta = trades_beta
        self.aux_rotation_weight = aux_rotation_weight
        self.rotation_head = None
        if aux_rotation_weight > 0:
            self.rotation_head = keras.layers.Dense(rotation.NUM_CLASSES, name="rotation_aux_dense")
            self.rotation_head.build((None, feature_dim))

    @property
    def adversarial(self) -> bool:
        return self.objective != "standard"

    def metric_names(self, adversarial: bool) -> tuple[str, ...]:
        if adversarial != self.adversarial:
            raise ValueError(f"objective {self.objective} is {'not ' if not self.adversarial else ''}adversarial")
        names = {
            "standard": ("loss", "accuracy"),
            "adversarial": ("loss", "adv_loss", "adv_accuracy"),
            "trades": ("loss", "clean_loss", "kl", "clean_accuracy", "adv_accuracy"),
        }[self.objective]
        return names + (("rotation_loss", "rotation_accuracy") if self.rotation_head is not None else ())

    # -- inputs ---------------------------------------------------------------------------------------------------
    def transform(self, images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        del seed  # the class labels are the targets; augmentation happened before
        return {"inputs": images, "labels": tf.cast(labels, tf.int32)}

    def extra_variables(self) -> list[tf.Variable]:
        """Trainable variables outside the classifier (the rotation head)."""
        return list(self.rotation_head.trainable_variables) if self.rotation_head is not None else []

    def checkpoint_items(self) -> dict[str, Any]:
        return {"rotation_aux_head": self.rotation_head} if self.rotation_head is not None else {}

    # -- the rotation auxiliary ------------------------------------------------------------------------------------
    def _aux_inputs(self, images: tf.Tensor) -> tf.Tensor:
        """B images → 5B: the images for the classifier, then their four rotations for the rotation head."""
        return tf.concat([images, rotation_copies(images)], axis=0)

    def _aux_outputs(self, model: ImageClassifier, inputs: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """5B inputs → (class logits of the first B, rotation logits of the other 4B), one forward pass."""
        n = tf.shape(inputs)[0] // 5
        features = model.features(inputs, training=training)
        logits = tf.cast(model.head(features[:n]), tf.float32)
        rot_logits = tf.cast(self.rotation_head(features[n:]), tf.float32)
        return logits, rot_logits

    def _aux_attack_loss(self, targets, outputs) -> tf.Tensor:
        # Every input image gets the gradient of its own loss only, so each image's sign step ignores the weight;
        # it matters only through batch-statistics coupling (Hendrycks et al. divide by 8, we use the train weight).
        labels, rot_labels = targets
        logits, rot_logits = outputs
        return tf.concat(
            [cross_entropy(labels, logits), self.aux_rotation_weight * cross_entropy(rot_labels, rot_logits)], 0
        )

    # -- attack and losses (inside the replica step) ----------------------------------------------------------------
    def craft(self, model: ImageClassifier, batch: dict, seed: tf.Tensor, bn_training: bool) -> tf.Tensor:
        """PGD on the objective's attack loss: CE (adversarial), KL to the clean prediction (TRADES), CE + rotation."""
        x, y = batch["inputs"], batch["labels"]
        budget = dict(eps=self.attack.eps, step_size=self.attack.step_size, steps=self.attack.steps, seed=seed)
        if self.rotation_head is not None:
            return pgd_linf(
                lambda z: self._aux_outputs(model, z, bn_training),
                self._aux_inputs(x),
                (y, rotation_labels(tf.shape(x)[0])),
                loss_fn=self._aux_attack_loss,
                **budget,
            )
        model_fn = lambda z: model(z, training=bn_training)  # noqa: E731
        if self.objective == "trades":
            clean_logits = tf.stop_gradient(model_fn(x))
            return pgd_linf(model_fn, x, clean_logits, loss_fn=kl_divergence, **budget)
        return pgd_linf(model_fn, x, y, **budget)

    def losses(self, model: ImageClassifier, batch: dict, adv: tf.Tensor | None) -> tuple[tf.Tensor, dict]:
        """Per-example training loss and per-example metrics."""
        x, y = batch["inputs"], batch["labels"]
        if self.rotation_head is not None:
            logits, rot_logits = self._aux_outputs(model, self._aux_inputs(x) if adv is None else adv, True)
            rot_labels = rotation_labels(tf.shape(x)[0])
            ce = cross_entropy(y, logits)
            # Mean over each image's 4 rotated copies: the batch mean is then CE + w · (mean rotation CE over 4B).
            rot_ce = tf.reduce_mean(tf.reshape(cross_entropy(rot_labels, rot_logits), [rotation.NUM_CLASSES, -1]), 0)
            rot_acc = tf.reduce_mean(tf.reshape(accuracy(rot_labels, rot_logits), [rotation.NUM_CLASSES, -1]), 0)
            loss = ce + self.aux_rotation_weight * rot_ce
            metrics = {"loss": loss, "rotation_loss": rot_ce, "rotation_accuracy": rot_acc}
            if adv is None:
                return loss, {**metrics, "accuracy": accuracy(y, logits)}
            return loss, {**metrics, "adv_loss": ce, "adv_accuracy": accuracy(y, logits)}
        if self.objective == "standard":
            logits = model(x, training=True)
            loss = cross_entropy(y, logits)
            return loss, {"loss": loss, "accuracy": accuracy(y, logits)}
        adv_logits = model(adv, training=True)
        if self.objective == "adversarial":
            loss = cross_entropy(y, adv_logits)
            return loss, {"loss": loss, "adv_loss": loss, "adv_accuracy": accuracy(y, adv_logits)}
        clean_logits = model(x, training=True)
        clean = cross_entropy(y, clean_logits)
        kl = kl_divergence(clean_logits, adv_logits)
        loss = clean + self.trades_beta * kl
        return loss, {
            "loss": loss,
            "clean_loss": clean,
            "kl": kl,
            "clean_accuracy": accuracy(y, clean_logits),
            "adv_accuracy": accuracy(y, adv_logits),
        }
