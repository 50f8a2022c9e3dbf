"""What every task shares: the per-example accuracy metric."""

from __future__ import annotations

import tensorflow as tf


def accuracy(labels, logits) -> tf.Tensor:
    """Per-example 0/1 correctness, float32."""
    return tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)), tf.float32)
