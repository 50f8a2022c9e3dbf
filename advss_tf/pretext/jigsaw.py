"""Jigsaw pretext task: a 4x4 grid of patches (8x8 on 32x32 images) shuffled by one of 31 permutations; predict which one.

The 30 random permutations are drawn once from the seed (plus the identity, class 0). They are part of the model:
a model trained with one set is meaningless with another, so they travel with checkpoints and exports.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from advss_tf.patches import NUM_PATCHES, from_patches, to_patches


def make_permutations(num_random: int = 30, seed: int = 0) -> np.ndarray:
    """int32 [num_random + 1, 16]: row 0 the identity, then distinct non-identity permutations from `seed`."""
    rng = np.random.default_rng(seed)
    perms = [tuple(range(NUM_PATCHES))]
    while len(perms) < num_random + 1:
        p = tuple(int(v) for v in rng.permutation(NUM_PATCHES))
        if p not in perms:
            perms.append(p)
    return np.asarray(perms, np.int32)


def shuffle_patches(images: tf.Tensor, perms: tf.Tensor) -> tf.Tensor:
    """new_patch[j] = patch[perm[j]] for each image's own permutation perms[i] (int [N, 16])."""
    return from_patches(tf.gather(to_patches(images), perms, axis=1, batch_dims=1))


def inverse_permutations(perms: tf.Tensor) -> tf.Tensor:
    """The permutation that undoes each row of `perms`."""
    return tf.argsort(perms, axis=-1)


def jigsaw_labels(batch_size: tf.Tensor, num_classes: int, identity_prob: float, seed: tf.Tensor) -> tf.Tensor:
    """Uniform over the classes, then forced to the identity (class 0) with probability `identity_prob`."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    labels = tf.random.stateless_uniform([batch_size], seed=seeds[0], maxval=num_classes, dtype=tf.int32)
    force = tf.random.stateless_uniform([batch_size], seed=seeds[1]) < identity_prob
    return tf.where(force, tf.zeros_like(labels), labels)


def jigsaw_transform(images: tf.Tensor, seed: tf.Tensor, permutations, identity_prob: float = 0.1) -> dict:
    """Pure TF: images [N, H, W, 3] (H, W divisible by 4), seed [2] → {'inputs': shuffled images, 'labels': permutation index}."""
    permutations = tf.convert_to_tensor(permutations, tf.int32)
    labels = jigsaw_labels(tf.shape(images)[0], permutations.shape[0], identity_prob, seed)
    return {"inputs": shuffle_patches(images, tf.gather(permutations, labels)), "labels": labels}
