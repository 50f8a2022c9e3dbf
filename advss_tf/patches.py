"""The patch grid of the patch-based pretext tasks: an image as a 4x4 grid of patches (8x8 on a 32x32 image, 24x24
on STL-10's 96x96; any height and width divisible by 4).

Patches are numbered row-major (patch p sits at row p // 4, column p % 4). Jigsaw shuffles them; Selfie hides the
first 4 positions of a patch order (the targets) and shows the other 12. The Selfie model cuts its inputs with the
same functions, so they sit below both the transforms (`advss_tf.pretext`) and the models (`advss_tf.models`).
Pure TF; imports nothing of advss_tf.
"""

from __future__ import annotations

import tensorflow as tf

GRID = 4
PATCH = 8  # on a 32x32 image; `patch_size` gives it for any image size
NUM_PATCHES = GRID * GRID
NUM_TARGETS = NUM_PATCHES // 4  # the reference hides a quarter of the patches
NUM_VISIBLE = NUM_PATCHES - NUM_TARGETS


def check_image_shape(image_shape, task: str) -> None:
    """ValueError with one line unless the images' height and width are divisible by the grid (what `task` needs)."""
    height, width = int(image_shape[0]), int(image_shape[1])
    if height % GRID or width % GRID or height < GRID or width < GRID:
        raise ValueError(
            f"{task} cuts images into a {GRID}x{GRID} grid of patches: their height and width must be divisible by "
            f"{GRID}, got {height}x{width} (resize them with --image_size)"
        )


def patch_size(image_shape) -> tuple[int, int]:
    """(height, width) of one patch of an image of `image_shape` (H, W, ...)."""
    return int(image_shape[0]) // GRID, int(image_shape[1]) // GRID


def to_patches(images: tf.Tensor, grid: int = GRID) -> tf.Tensor:
    """[N, H, W, C] → [N, grid², H/grid, W/grid, C], patches in row-major order."""
    n, h, w, c = tf.shape(images)[0], images.shape[1], images.shape[2], images.shape[-1]
    ph, pw = h // grid, w // grid
    x = tf.reshape(images, [n, grid, ph, grid, pw, c])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [n, grid * grid, ph, pw, c])


def from_patches(patches: tf.Tensor, grid: int = GRID) -> tf.Tensor:
    """Inverse of `to_patches`."""
    n, ph, pw, c = tf.shape(patches)[0], patches.shape[2], patches.shape[3], patches.shape[-1]
    x = tf.reshape(patches, [n, grid, grid, ph, pw, c])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [n, grid * ph, grid * pw, c])


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
