"""Rotation and Jigsaw transforms: invariants that a wrong implementation breaks."""

import numpy as np
import tensorflow as tf

from advss_tf.patches import to_patches
from advss_tf.pretext import jigsaw, rotation


def test_rotation_labels_are_balanced_within_a_batch():
    for batch in (8, 10, 128):
        labels = rotation.balanced_labels(batch, 4, tf.constant([3, batch], tf.int64)).numpy()
        counts = np.bincount(labels, minlength=4)
        assert counts.max() - counts.min() <= 1 and counts.sum() == batch


def test_rotation_undone_gives_the_image_back():
    x = tf.random.uniform([8, 32, 32, 3], seed=0)
    out = rotation.rotation_transform(x, tf.constant([1, 2], tf.int64))
    for i, k in enumerate(out["labels"].numpy()):
        np.testing.assert_array_equal(np.rot90(out["inputs"][i].numpy(), -k, axes=(0, 1)), x[i].numpy())
    assert len(set(out["labels"].numpy())) == 4


def test_permutations_are_seeded_distinct_with_identity_first():
    p = jigsaw.make_permutations(30, seed=4)
    assert p.shape == (31, 16)
    np.testing.assert_array_equal(p[0], np.arange(16))
    assert len({tuple(r) for r in p}) == 31
    assert all(sorted(r) == list(range(16)) for r in p)
    np.testing.assert_array_equal(p, jigsaw.make_permutations(30, seed=4))
    assert not np.array_equal(p, jigsaw.make_permutations(30, seed=5))


def test_shuffle_moves_patches_as_defined_and_inverse_restores():
    x = tf.random.uniform([4, 32, 32, 3], seed=2)
    perms = tf.constant(jigsaw.make_permutations(30, seed=0)[[1, 2, 3, 4]])
    shuffled = jigsaw.shuffle_patches(x, perms)
    patches, new = to_patches(x).numpy(), to_patches(shuffled).numpy()
    for i in range(4):
        for j in range(16):
            np.testing.assert_array_equal(new[i, j], patches[i, perms[i, j]])  # new_patch[j] = patch[perm[j]]
    restored = jigsaw.shuffle_patches(shuffled, jigsaw.inverse_permutations(perms))
    np.testing.assert_array_equal(restored, x)


def test_patch_grid_is_row_major_8x8():
    x = tf.reshape(tf.range(32 * 32, dtype=tf.float32), [1, 32, 32, 1])
    p = to_patches(x).numpy()
    assert p.shape == (1, 16, 8, 8, 1)
    assert p[0, 1, 0, 0, 0] == 8 and p[0, 4, 0, 0, 0] == 8 * 32  # patch 1 is right of 0, patch 4 below it


def test_identity_is_forced_with_probability_point_one():
    labels = jigsaw.jigsaw_labels(20000, 31, 0.1, tf.constant([0, 9], tf.int64)).numpy()
    p_identity = np.mean(labels == 0)
    assert abs(p_identity - (0.1 + 0.9 / 31)) < 0.01  # ≈ 0.129
    assert labels.max() == 30
