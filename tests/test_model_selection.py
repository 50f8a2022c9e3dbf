"""Fine-tuning's validation robust accuracy is `evaluate`'s: correct on the clean image AND on its attack."""

import numpy as np
import tensorflow as tf

from advss_tf.config import AttackConfig
from advss_tf.training.finetuning import Validator


def test_validation_ra_counts_only_images_correct_clean_and_adversarially(sample_arrays):
    x, _, _, _ = sample_arrays
    images = x[:16]
    labels = np.zeros(16, np.int32)

    def model(z, training=False):
        # Class 1 on the 1/255 grid (every clean image: wrong), class 0 off it (PGD's random start and its steps of
        # 2/255 keep the image off the grid: right). The grid distance carries no gradient, the attack cannot undo it.
        off = tf.reduce_mean(tf.abs(z * 255.0 - tf.stop_gradient(tf.round(z * 255.0))), axis=[1, 2, 3])
        off = tf.cast(off > 1e-3, tf.float32)
        return (
            tf.stack([off, 1.0 - off] + [tf.zeros_like(off) - 1.0] * 8, axis=1)
            + 0.0 * tf.reduce_sum(z, [1, 2, 3])[:, None]
        )

    validator = Validator(
        tf.distribute.get_strategy(),
        model,
        images,
        labels,
        batch_size=8,
        attack=AttackConfig(steps=2),
        steps=2,
        seed=0,
        quiet=True,
    )
    metrics = validator()
    assert metrics["clean_accuracy"] == 0.0
    assert metrics["robust_accuracy"] == 0.0  # the adversarial examples are all classified right, yet none counts
    assert metrics["robust_loss"] < metrics["clean_loss"]  # they really were (the model is as described)
