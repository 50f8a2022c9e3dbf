"""BatchNormalization that runs TensorFlow's fused kernel (FusedBatchNormV3), with Keras 3's numerics and variables.

Keras 3's BatchNormalization under the TensorFlow backend computes `tf.nn.moments` and `tf.nn.batch_normalization`
from elementwise ops, forward and backward: about a dozen ops over the whole activation per layer and direction.
TensorFlow's FusedBatchNormV3 (rewritten to oneDNN's kernel when oneDNN is on) does the same normalisation in one
pass, and its gradient in one more. On the ResNet-18 PGD-10 step the unfused ops were a quarter of the op time
(docs/benchmarks.md).

The layer is a subclass: the same weights (gamma, beta, moving_mean, moving_variance), the same names and the same
checkpoint keys, so checkpoints and exports written with Keras' layer restore into it and back. Training mode
normalises with the biased batch variance and moves the averages with it, exactly as Keras; the kernel's variance
output carries Bessel's correction, which is undone here. Where the kernel does not apply (synchronised BN, masks,
renorm, an axis other than the last of a 4-D input) the layer is Keras' own.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="advss_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` (same arguments) computed by `FusedBatchNormV3` where it applies."""

    def _fusable(self, inputs, mask) -> bool:
        axis = self.axis if isinstance(self.axis, int) else (self.axis[0] if len(self.axis) == 1 else None)
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.synchronized
            and not self.renorm
            and self.center
            and self.scale
            and len(inputs.shape) == 4
            and axis in (-1, 3)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        # As Keras: statistics and normalisation in float32 whatever the compute dtype (mixed precision).
        x = tf.cast(inputs, tf.float32)
        gamma, beta = tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32)
        if training and self.trainable:
            y, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=gamma,
                offset=beta,
                mean=tf.constant([], tf.float32),
                variance=tf.constant([], tf.float32),
                epsilon=self.epsilon,
                exponential_avg_factor=1.0,
                data_format="NHWC",
                is_training=True,
            )
            # The kernel normalised with the biased variance but returns n/(n-1) times it (n = N·H·W; n = 1 is
            # returned uncorrected, as 0); Keras' moving average takes the biased one.
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
            variance = unbiased_variance * ((n - 1.0) / n)
            moving_mean = tf.cast(self.moving_mean, tf.float32)
            moving_variance = tf.cast(self.moving_variance, tf.float32)
            self.moving_mean.assign(moving_mean * self.momentum + tf.stop_gradient(mean) * (1.0 - self.momentum))
            self.moving_variance.assign(
                moving_variance * self.momentum + tf.stop_gradient(variance) * (1.0 - self.momentum)
            )
        else:
            y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=gamma,
                offset=beta,
                mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon,
                exponential_avg_factor=1.0,
                data_format="NHWC",
                is_training=False,
            )
        return tf.cast(y, self.compute_dtype)
