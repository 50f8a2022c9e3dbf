"""Rotation pretext task (Gidaris et al. 2018): predict which of 0/90/180/270° an image was rotated by."""

from __future__ import annotations

import tensorflow as tf

NUM_CLASSES = 4


def check_image_shape(image_shape, task: str = "rotation") -> None:
    """ValueError with one line unless the images are square (a 90° turn of a non-square image changes its shape)."""
    if int(image_shape[0]) != int(image_shape[1]):
        raise ValueError(
            f"{task} turns images by 90°: they must be square, got {image_shape[0]}x{image_shape[1]} "
            "(resize them with --image_size)"
        )


def balanced_labels(batch_size: int, num_classes: int, seed: tf.Tensor) -> tf.Tensor:
    """A shuffled [0, 1, …, k-1]* repeat of length `batch_size`: every class appears ⌊B/k⌋ or ⌈B/k⌉ times."""
    repeats = -(-batch_size // num_classes)
    labels = tf.tile(tf.range(num_classes, dtype=tf.int32), [repeats])[:batch_size]
    order = tf.argsort(tf.random.stateless_uniform([batch_size], seed=seed))
    return tf.gather(labels, order)


def rotate(images: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """Rotates each square image [N, S, S, C] counter-clockwise by k[i]·90°."""
    rotations = tf.stack([tf.image.rot90(images, j) for j in range(NUM_CLASSES)], axis=1)  # [N, 4, S, S, C]
    return tf.gather(rotations, k, axis=1, batch_dims=1)


def rotation_transform(images: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """Pure TF: square images [N, S, S, 3] in [0, 1], seed [2] → {'inputs': rotated images, 'labels': k}."""
    labels = balanced_labels(tf.shape(images)[0], NUM_CLASSES, seed)
    return {"inputs": rotate(images, labels), "labels": labels}
