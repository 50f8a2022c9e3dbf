"""trunk → stage 4 → global average pool → Dense: the CIFAR-10 classifier and the Rotation / Jigsaw pretext models."""

from __future__ import annotations

import keras

from advss_tf.models.backbones import BackboneConfig, build_stage4, build_trunk


class ImageClassifier(keras.Model):
    """Images in [0, 1] → logits, holding its parts by name so each can be checkpointed or restored alone.

    Rotation (4 classes), Jigsaw (31) and the downstream classifier (10) are all this model; the ensemble shares
    one `trunk` object between several of them.

    `frozen_parts` (names among "trunk", "stage4") run in inference mode whatever `training` says: fine-tuning's
    linear/partial modes freeze them, and a frozen part's BatchNorm must neither use batch statistics nor move its
    moving averages. Empty by default (every part follows `training`).
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        num_classes: int,
        trunk: keras.Model | None = None,
        head_name: str = "head",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.num_classes = num_classes
        self.trunk = trunk if trunk is not None else build_trunk(backbone)
        self.stage4 = build_stage4(backbone, name=f"{head_name}_stage4")
        self.pool = keras.layers.GlobalAveragePooling2D(name=f"{head_name}_pool")
        self.head = keras.layers.Dense(num_classes, name=f"{head_name}_dense")
        self.frozen_parts: frozenset[str] = frozenset()
        self.build((None, 32, 32, 3))

    def build(self, input_shape):
        features = self.trunk.compute_output_shape(input_shape)
        self.head.build((input_shape[0], self.backbone.feature_dim))
        del features
        super().build(input_shape)

    def part_training(self, part: str, training: bool) -> bool:
        """The `training` flag a part runs with: False for a frozen part, else `training`."""
        return False if part in self.frozen_parts else training

    def features(self, images, training: bool = False):
        """Pooled stage-4 features [N, D] (what a linear probe or the ensemble sees)."""
        trunk_out = self.trunk(images, training=self.part_training("trunk", training))
        return self.pool(self.stage4(trunk_out, training=self.part_training("stage4", training)))

    def call(self, images, training: bool = False):
        # Logits stay float32 under mixed precision: the losses and the attacks' gradients need the range.
        return keras.ops.cast(self.head(self.features(images, training=training)), "float32")

    @property
    def checkpoint_items(self) -> dict:
        return dict(trunk=self.trunk, stage4=self.stage4, head=self.head)
