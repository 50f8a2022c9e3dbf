"""Selfie pretext task (Trinh et al. 2019) bookkeeping: patch order, which patches are hidden, which answers which.

An image is a 4x4 grid of patches (8x8 on 32x32 images, 24x24 on 96x96), numbered row-major (patch p sits at row p // 4, column p % 4). Per
batch one random order of the 16 patches is drawn: its first 4 entries are the target (hidden) positions, the other
12 are visible. Query i asks "which of the 4 target patches belongs at position order[i]?"; the candidates are the
target patches in the same order, so the answer to query i is candidate i.

Everything here is pure TF. The order travels in the batch dict as a per-example tensor ([B, 16], the same row
repeated) because `experimental_distribute_dataset` splits every value along its first axis; a replica reads row 0.
"""

from __future__ import annotations

import tensorflow as tf

from advss_tf.patches import (
    GRID,
    NUM_PATCHES,
    NUM_TARGETS,
    NUM_VISIBLE,
    PATCH,
    from_patches,
    split_order,
    split_patches,
    to_patches,
)

__all__ = [
    "GRID",
    "NUM_PATCHES",
    "NUM_TARGETS",
    "NUM_VISIBLE",
    "PATCH",
    "from_patches",
    "mask_targets",
    "patch_order",
    "query_labels",
    "selfie_transform",
    "split_order",
    "split_patches",
    "to_patches",
]


def patch_order(seed: tf.Tensor) -> tf.Tensor:
    """A uniformly random permutation of the 16 patch indices, int32 [16], stateless in `seed` [2]."""
    return tf.cast(tf.argsort(tf.random.stateless_uniform([NUM_PATCHES], seed=seed)), tf.int32)


def query_labels(batch_size: tf.Tensor) -> tf.Tensor:
    """int32 [B, 4]: query i's answer is candidate i, for every example."""
    return tf.tile(tf.range(NUM_TARGETS, dtype=tf.int32)[None], [batch_size, 1])


def selfie_transform(images: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """Pure TF: images [B, H, W, 3] (H, W divisible by 4), seed [2] → {'inputs': images, 'order': [B, 16] (one order, repeated)}.

    The images are not changed: the model patches them itself, so an attack can perturb the whole image.
    """
    order = patch_order(seed)
    return {"inputs": images, "order": tf.tile(order[None], [tf.shape(images)[0], 1])}


def mask_targets(images: tf.Tensor, order: tf.Tensor, fill: float = 0.5) -> tf.Tensor:
    """The images with the 4 target patches of `order` [16] blanked to `fill` (what the transformer cannot see)."""
    targets, _ = split_order(order)
    hidden = tf.reduce_any(tf.equal(tf.range(NUM_PATCHES)[:, None], targets[None]), axis=1)  # [16]
    patches = to_patches(images)
    blank = tf.fill(tf.shape(patches), tf.cast(fill, patches.dtype))
    return from_patches(tf.where(hidden[None, :, None, None, None], blank, patches))
