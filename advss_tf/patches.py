"""The patch grid of the patch-based pretext tasks: a 32x32 image as a 4x4 grid of 8x8 patches.

Patches are numbered row-major (patch p sits at row p // 4, column p % 4). Jigsaw shuffles them; Selfie hides the
first 4 positions of a patch order (the targets) and shows the other 12. The Selfie model cuts its inputs with the
same functions, so they sit below both the transforms (`advss_tf.pretext`) and the models (`advss_tf.models`).
Pure TF; imports nothing of advss_tf.
"""

from __future__ import annotations

import tensorflow as tf

GRID = 4
PATCH = 8
NUM_PATCHES = GRID * GRID
NUM_TARGETS = NUM_PATCHES // 4  # the reference hides a quarter of the patches
NUM_VISIBLE = NUM_PATCHES - NUM_TARGETS


def to_patches(images: tf.Tensor, grid: int = GRID) -> tf.Tensor:
    """[N, S, S, C] → [N, grid², S/grid, S/grid, C], patches in row-major order."""
    n, s, c = tf.shape(images)[0], images.shape[1], images.shape[-1]
    p = s // grid
    x = tf.reshape(images, [n, grid, p, grid, p, c])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [n, grid * grid, p, p, c])


def from_patches(patches: tf.Tensor, grid: int = GRID) -> tf.Tensor:
    """Inverse of `to_patches`."""
    n, p, c = tf.shape(patches)[0], patches.shape[2], patches.shape[-1]
    x = tf.reshape(patches, [n, grid, grid, p, p, c])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [n, grid * p, grid * p, c])


def split_order(order: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(target positions [4], visible positions [12]) of one order [16]."""
    order = tf.convert_to_tensor(order, tf.int32)
    return order[:NUM_TARGETS], order[NUM_TARGETS:]


def split_patches(patches: tf.Tensor, order: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Anything per patch [B, 16, ...] → (targets [B, 4, ...] in query order, visible [B, 12, ...]).

    targets[:, i] is the patch at position order[i]: the right answer to query i.
    """
    targets, visible = split_order(order)
    return tf.gather(patches, targets, axis=1), tf.gather(patches, visible, axis=1)
