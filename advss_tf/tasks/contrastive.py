"""Robust contrastive pretraining: `--task=acl` (Jiang et al. 2020) and `--task=dynacl` (Luo et al. 2023), each
with AIR's regularisers as an option (`ContrastiveConfig.air`; Xu et al. 2023). docs/contrastive.md traces every
constant to its source line and lists where this code differs from theirs.

Per step: two SimCLR views of each image (pretext/simclr_views.py), a pure function of (seed, step); contrastive PGD
on both (attacks/contrastive_pgd.py) through the adversarial BatchNorm route; the clean views through the clean
route and the adversarial ones through the adversarial route, in the backbone and the projection head; NT-Xent over
the global batch (attacks/nt_xent.py). The losses, as each code computes them (w, s from `schedules`):

- ACL (`train_simCLR.py:219-223`): (NT-Xent(clean) + NT-Xent(adv)) / 2.
- DynACL (`train_DynACL.py:280-291`): ((2 − w)·NT-Xent(clean) + w·NT-Xent(adv)) / 2 with
  w = min(1 + ⌊e/K⌋·(K/E)·λ, 2), views of strength s = 1 − ⌊(e − 1)/K⌋·K/E (`:217-219`), and DynACL's momentum
  key encoder (models/contrastive.py).
- AIR (`pretraining.py:322-347`, `AIR.py:100`): (1 − w)·NT-Xent(clean) + (1 + w)·NT-Xent(adv) + λ₁·SIR + λ₂·AIR,
  w = 0 for ACL and w = λ·(1 − s) for DynACL (AIR's `--DynAug`: its one encoder, no momentum key), with the original
  image's projection through the clean route (attacks/air.py).

e is the 1-based epoch, E the run's epochs, K `dynacl_period`, λ `dynacl_swap_param`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from advss_tf.attacks.air import invariance_regularisers
from advss_tf.attacks.contrastive_pgd import contrastive_pgd
from advss_tf.attacks.nt_xent import nt_xent_per_anchor
from advss_tf.config import PretrainConfig
from advss_tf.models.contrastive import MomentumEncoders, build_contrastive_model, exported_network
from advss_tf.models.post_resnet import ADVERSARIAL, CLEAN, ROUTES
from advss_tf.pretext.simclr_views import simclr_views

PARTS = ("trunk", "stage4", "projection")
FEATURE_ROUTE = ADVERSARIAL  # the export's `features`: what ACL fine-tunes from


# -- DynACL's schedules, as pure functions of the 1-based epoch (tests/test_contrastive.py) ---------------------------
def dynacl_strength(epoch, epochs: float, period: int) -> tf.Tensor:
    """1 − ⌊(e − 1)/K⌋·K/E: DynACL reloads its data with strength 1 − (e − 1)/E at the epochs e with e mod K = 1
    (`train_DynACL.py:217-219`; AIR `pretraining.py:284-285` writes this closed form)."""
    e = tf.cast(epoch, tf.float32)
    return 1.0 - tf.math.floor((e - 1.0) / period) * period / epochs


def dynacl_adversarial_weight(epoch, epochs: float, period: int, swap_param: float) -> tf.Tensor:
    """min(1 + ⌊e/K⌋·(K/E)·λ, 2) (`train_DynACL.py:288`): one epoch ahead of the strength at its change points."""
    e = tf.cast(epoch, tf.float32)
    return tf.minimum(1.0 + tf.math.floor(e / period) * (period / epochs) * swap_param, 2.0)


class ContrastiveTask:
    """ACL or DynACL (`name`), with AIR's regularisers when `config.contrastive.air`."""

    def __init__(self, config: PretrainConfig, name: str):
        self.config, self.name = config, name
        self.settings = config.contrastive
        self.air = self.settings.air
        self.dynamic = name == "dynacl"  # DynACL's strength and weight schedules
        self.momentum = self.dynamic and not self.air  # AIR's DynACL branch trains one encoder
        # PIL's resampling of the crop: ACL and AIR bicubic (interpolation=3), DynACL torchvision's default bilinear.
        self.interpolation = "bilinear" if self.momentum else "bicubic"

    def metric_names(self, adversarial: bool) -> tuple[str, ...]:
        del adversarial  # always adversarial (PretrainConfig refuses --noadversarial)
        names = ("loss", "clean_loss", "adv_loss", "strength", "adv_weight")
        return names + (("sir", "air") if self.air else ())

    # -- inputs ---------------------------------------------------------------------------------------------------
    def _epochs(self, steps_per_epoch) -> float:
        cfg = self.config
        return cfg.train_steps / float(steps_per_epoch) if cfg.train_steps > 0 else float(cfg.epochs)

    def step_transform(self, images, labels, seed, step, steps_per_epoch) -> dict[str, tf.Tensor]:
        """Two views of each image at the step's strength, the step's loss weights per example, and (AIR) the image."""
        del labels  # self-supervised
        n = tf.shape(images)[0]
        strength, clean_w, adv_w = tf.constant(1.0), tf.constant(1.0), tf.constant(1.0)
        if self.dynamic:
            epoch = tf.cast(step // steps_per_epoch + 1, tf.float32)
            epochs, k = self._epochs(steps_per_epoch), self.settings.dynacl_period
            strength = dynacl_strength(epoch, epochs, k)
            if not self.air:
                w = dynacl_adversarial_weight(epoch, epochs, k, self.settings.dynacl_swap_param)
                clean_w, adv_w = (2.0 - w) / 2.0, w / 2.0
        if self.air:
            w = self.settings.dynacl_swap_param * (1.0 - strength) if self.dynamic else tf.constant(0.0)
            clean_w, adv_w = 1.0 - w, 1.0 + w
        elif not self.dynamic:
            clean_w, adv_w = tf.constant(0.5), tf.constant(0.5)
        batch = simclr_views(images, seed, strength, self.interpolation)
        for key, value in (("strength", strength), ("clean_weight", clean_w), ("adv_weight", adv_w)):
            batch[key] = tf.fill([n], tf.cast(value, tf.float32))
        if self.air:
            batch["original"] = images
        return batch

    def transform(self, images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.step_transform(images, labels, seed, tf.constant(0, tf.int64), 1)

    # -- model ----------------------------------------------------------------------------------------------------
    def build_model(self) -> keras.Model:
        momentum = self.settings.dynacl_encoder_momentum if self.momentum else None
        return build_contrastive_model(self.config.backbone, momentum)

    def extra_checkpoint_items(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def trained_variables(model: keras.Model) -> list:
        """What the optimizer trains: the query's variables in DynACL's pair (the key moves by momentum)."""
        return (model.query if isinstance(model, MomentumEncoders) else model).trainable_variables

    @staticmethod
    def _pair(model, x1, x2, training: bool, route: str) -> tuple[tf.Tensor, tf.Tensor]:
        """The two views' projections: DynACL's query/key, or ACL's one network on both views in one batch (their
        BatchNorm statistics are the 2n images')."""
        if isinstance(model, MomentumEncoders):
            return model.pair(x1, x2, training, route)
        z = model(tf.concat([x1, x2], axis=0), training=training, route=route)
        n = tf.shape(x1)[0]
        return z[:n], z[n:]

    # -- attack and losses (inside the replica step) ----------------------------------------------------------------
    def craft(self, model: keras.Model, batch: dict, seed: tf.Tensor, bn_training: bool) -> tuple:
        """Contrastive PGD on both views through the adversarial route (ACL: inference mode, `--attack_bn=eval`)."""
        attack = self.config.attack

        def embed(x):
            n = tf.shape(x)[0] // 2
            return tf.concat(self._pair(model, x[:n], x[n:], bn_training, ADVERSARIAL), axis=0)

        return contrastive_pgd(
            embed,
            batch["view1"],
            batch["view2"],
            eps=attack.eps,
            step_size=attack.step_size,
            steps=attack.steps,
            seed=seed,
            temperature=self.settings.temperature,
        )

    def _nt_xent(self, z1, z2) -> tf.Tensor:
        """Per image, the mean of its two anchors' NT-Xent terms: their mean over the global batch is NT-Xent."""
        per_anchor = nt_xent_per_anchor(z1, z2, self.settings.temperature)
        n = tf.shape(z1)[0]
        return (per_anchor[:n] + per_anchor[n:]) / 2.0

    def losses(self, model: keras.Model, batch: dict, adv: tuple | None) -> tuple[tf.Tensor, dict]:
        a1, a2 = adv
        z1_adv, z2_adv = self._pair(model, a1, a2, True, ADVERSARIAL)  # as their code: adversarial first
        z1, z2 = self._pair(model, batch["view1"], batch["view2"], True, CLEAN)
        if isinstance(model, MomentumEncoders):
            model.update_key()  # after the forward passes, before the update (train_DynACL.py:286)
        clean, adv_loss = self._nt_xent(z1, z2), self._nt_xent(z1_adv, z2_adv)
        loss = batch["clean_weight"] * clean + batch["adv_weight"] * adv_loss
        metrics = {"clean_loss": clean, "adv_loss": adv_loss, "strength": batch["strength"]}
        metrics["adv_weight"] = batch["adv_weight"]
        if self.air:
            z_orig = model(batch["original"], training=True, route=CLEAN)
            sir, air = invariance_regularisers(z1, z2, z_orig, z1_adv, z2_adv, self.settings.temperature)
            # The regularisers are sums over the global batch: ×G per image, as the loop averages over G.
            g = float(self.config.batch_size)
            metrics.update(sir=sir * g, air=air * g)
            loss += g * (self.settings.air_sir_weight * sir + self.settings.air_air_weight * air)
        return loss, {**metrics, "loss": loss}

    # -- export ---------------------------------------------------------------------------------------------------
    def export_parts(self, model: keras.Model) -> dict[str, Any]:
        network = exported_network(model)
        return {part: getattr(network, part) for part in PARTS}

    def export_signatures(self, model: keras.Model) -> dict[str, Callable]:
        """`features`: the adversarial route's pooled stage-4 features (what ACL fine-tunes from); `features_clean`:
        the clean route's. (The projection head is exported as a part, not served: a signature through it failed
        SavedModel's tracking check after training, see the README's open items.)"""
        network = exported_network(model)
        return {
            "features": lambda images: {"features": network.features(images, False, FEATURE_ROUTE)},
            "features_clean": lambda images: {"features": network.features(images, False, CLEAN)},
        }

    def export_assets(self) -> dict[str, str]:
        return {}

    def export_info(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "parts": list(PARTS),
            "routes": list(ROUTES),  # `finetune --pretrained_route` chooses one
            "signature_routes": {"features": FEATURE_ROUTE, "features_clean": CLEAN},
            "air": self.air,
            "encoder": "momentum key" if self.momentum else "the trained network",
        }

    # -- pictures -------------------------------------------------------------------------------------------------
    def summary_images(self, batch: dict) -> dict[str, tf.Tensor]:
        return {f"{self.name}_view1": batch["view1"], f"{self.name}_view2": batch["view2"]}


def acl_task(config: PretrainConfig) -> ContrastiveTask:
    return ContrastiveTask(config, "acl")


def dynacl_task(config: PretrainConfig) -> ContrastiveTask:
    return ContrastiveTask(config, "dynacl")
