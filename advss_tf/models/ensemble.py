"""The ensemble pretraining model: one trunk shared by Selfie, Rotation and Jigsaw (SPEC §4-5).

Rotation and Jigsaw each own a stage 4 + Dense (they are `ImageClassifier`s built around the shared trunk); Selfie
owns its transformer. Deviation: the reference ensemble trunk drops the stem BN/ReLU of the standalone models; here
the trunk is the same definition everywhere, so an ensemble export fine-tunes exactly like a single-task one.
"""

from __future__ import annotations

import keras

from advss_tf.models.backbones import BackboneConfig, build_trunk
from advss_tf.models.classifier import ImageClassifier
from advss_tf.models.selfie import SelfieModel


class EnsembleModel(keras.Model):
    """Holds `trunk`, `rotation`, `jigsaw` and `selfie` (the last three share `trunk`).

    Args:
      backbone: the trunk and the stage 4s.
      jigsaw_classes: number of jigsaw permutations (31 in the paper).
      rotation_classes: number of rotations (4: the pretext transform's, passed in so models know no transform).
      selfie_layers, selfie_heads, selfie_ff_dim, selfie_dropout: Selfie's transformer.
      selfie_logit_scale: factor on Selfie's query-patch dot products (None: 1/sqrt(trunk width)).
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        jigsaw_classes: int,
        selfie_layers: int = 13,
        selfie_heads: int = 16,
        selfie_ff_dim: int = 2048,
        selfie_dropout: float = 0.1,
        selfie_logit_scale: float | None = None,
        *,
        rotation_classes: int,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.trunk = build_trunk(backbone)
        self.rotation = ImageClassifier(
            backbone, rotation_classes, trunk=self.trunk, head_name="rotation", name="rotation_model"
        )
        self.jigsaw = ImageClassifier(
            backbone, jigsaw_classes, trunk=self.trunk, head_name="jigsaw", name="jigsaw_model"
        )
        self.selfie = SelfieModel(
            backbone,
            selfie_layers,
            selfie_heads,
            selfie_ff_dim,
            selfie_dropout,
            logit_scale=selfie_logit_scale,
            trunk=self.trunk,
            name="selfie_model",
        )
        self.build((None, 32, 32, 3))

    def build(self, input_shape):
        super().build(input_shape)

    def features(self, images, training: bool = False):
        """The shared trunk's features of whole images, globally average-pooled: [N, trunk channels]."""
        return self.selfie.features(images, training=training)

    def call(self, images, training: bool = False):
        """The three heads on the same images: rotation / jigsaw logits and Selfie logits (canonical order)."""
        return {
            "rotation": self.rotation(images, training=training),
            "jigsaw": self.jigsaw(images, training=training),
            "selfie": self.selfie(images, training=training),
        }

    @property
    def checkpoint_items(self) -> dict:
        return dict(
            trunk=self.trunk,
            rotation_stage4=self.rotation.stage4,
            rotation_head=self.rotation.head,
            jigsaw_stage4=self.jigsaw.stage4,
            jigsaw_head=self.jigsaw.head,
            selfie_head=self.selfie.selfie_head,
        )
