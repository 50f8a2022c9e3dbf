"""The pretext transforms and the Selfie patch encoder at 32x32 and STL-10's 96x96: the 4x4 grid's patches follow
the image size (8x8 and 24x24), rotation needs square images, and sizes the grid cannot cut are refused."""

import numpy as np
import pytest
import tensorflow as tf

from advss_tf import patches
from advss_tf.errors import UsageError
from advss_tf.models.backbones import BackboneConfig
from advss_tf.models.selfie import SelfieModel
from advss_tf.pretext import jigsaw, rotation
from advss_tf.pretext import selfie as selfie_lib
from advss_tf.tasks.table import check_image_shape

SEED = tf.constant([3, 4], tf.int64)


@pytest.mark.parametrize("size", [32, 96])
def test_patches_are_a_quarter_of_each_side_and_round_trip(size):
    images = tf.random.uniform([2, size, size, 3], seed=1)
    cut = patches.to_patches(images)
    assert cut.shape == (2, 16, size // 4, size // 4, 3) and patches.patch_size(images.shape[1:]) == (size // 4,) * 2
    np.testing.assert_array_equal(patches.from_patches(cut), images)
    # Patch 5 is row 1, column 1 of the grid.
    p = size // 4
    np.testing.assert_array_equal(cut[:, 5], images[:, p : 2 * p, p : 2 * p])


@pytest.mark.parametrize("size", [32, 96])
def test_jigsaw_moves_whole_patches_and_its_inverse_undoes_it(size):
    images = tf.random.uniform([4, size, size, 3], seed=2)
    perms = jigsaw.make_permutations(5, seed=0)
    batch = jigsaw.jigsaw_transform(images, SEED, perms, identity_prob=0.0)
    assert batch["inputs"].shape == images.shape
    chosen = tf.gather(perms, batch["labels"])
    restored = jigsaw.shuffle_patches(batch["inputs"], jigsaw.inverse_permutations(chosen))
    np.testing.assert_array_equal(restored, images)
    moved = patches.to_patches(batch["inputs"]).numpy()
    original = patches.to_patches(images).numpy()
    for i, perm in enumerate(chosen.numpy()):
        for j in range(16):
            np.testing.assert_array_equal(moved[i, j], original[i, perm[j]])


@pytest.mark.parametrize("size", [32, 96])
def test_rotation_and_selfie_transforms_keep_the_size(size):
    images = tf.random.uniform([8, size, size, 3], seed=3)
    rot = rotation.rotation_transform(images, SEED)
    assert rot["inputs"].shape == images.shape
    for i, k in enumerate(rot["labels"].numpy()):
        np.testing.assert_array_equal(rot["inputs"][i], tf.image.rot90(images[i], int(k)))
    selfie = selfie_lib.selfie_transform(images, SEED)
    assert selfie["order"].shape == (8, 16)
    masked = patches.to_patches(selfie_lib.mask_targets(images, selfie["order"][0])).numpy()
    targets, visible = selfie_lib.split_order(selfie["order"][0])
    assert all(np.all(masked[:, int(t)] == 0.5) for t in targets)
    np.testing.assert_array_equal(masked[:, int(visible[0])], patches.to_patches(images).numpy()[:, int(visible[0])])


def test_selfie_encodes_24x24_patches_of_96x96_images():
    model = SelfieModel(BackboneConfig("tiny"), num_layers=1, num_heads=2, ff_dim=16, dropout=0.0)
    images = tf.random.uniform([2, 96, 96, 3], seed=4)
    vectors = model.patch_vectors(images)
    assert vectors.shape == (2, 16, BackboneConfig("tiny").trunk_channels)
    # Patch 0's vector is the trunk on the top-left 24x24 crop alone.
    alone = tf.reduce_mean(model.trunk(images[:, :24, :24], training=False), axis=[1, 2])
    np.testing.assert_allclose(vectors[:, 0], alone, atol=1e-5)
    assert model(images).shape == (2, 4, 4)


@pytest.mark.parametrize(
    "task, shape, message",
    [
        ("jigsaw", (30, 30, 3), "divisible by 4, got 30x30"),
        ("selfie", (96, 98, 3), "divisible by 4, got 96x98"),
        ("rotation", (32, 48, 3), "must be square, got 32x48"),
        ("ensemble", (32, 48, 3), "must be square"),
    ],
)
def test_sizes_a_task_cannot_use_are_refused(task, shape, message):
    with pytest.raises(UsageError, match=message):
        check_image_shape(task, shape)


def test_sizes_the_tasks_can_use_pass():
    for task in ("rotation", "jigsaw", "selfie", "ensemble"):
        check_image_shape(task, (96, 96, 3))
    check_image_shape("jigsaw", (32, 48, 3))  # the grid needs no square
    check_image_shape("rotation", (30, 30, 3))  # turning needs no grid
