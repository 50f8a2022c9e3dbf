"""tf.data input pipelines: seeded train/validation split, class-balanced subsets, augmentation, batching.

Every random choice is a stateless function of (seed, global step), so the data a run sees at step t does not
depend on whether it was interrupted: resuming rebuilds the pipeline from the checkpointed step (SPEC §13).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from advss_tf.errors import UsageError

VALIDATION_FRACTION = 0.1  # 45k / 5k on the full training set, as the reference code


def train_val_split(labels: np.ndarray, seed: int, val_fraction: float = VALIDATION_FRACTION):
    """Indices (train, validation) of a fixed, seeded split of the official training set."""
    order = np.random.default_rng(seed).permutation(len(labels))
    n_val = int(round(len(labels) * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def class_balanced_subset(labels: np.ndarray, indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The same `fraction` of each class's examples among `indices` (the paper's dataset-size ablation)."""
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"--train_fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return indices
    rng = np.random.default_rng(seed + 1)
    keep = []
    for c in np.unique(labels[indices]):
        members = indices[labels[indices] == c]
        keep.append(rng.choice(members, size=max(1, int(round(len(members) * fraction))), replace=False))
    return np.sort(np.concatenate(keep))


def augment(images: tf.Tensor, seed: tf.Tensor, pad: int = 4, flip: bool = True) -> tf.Tensor:
    """Per-image random crop (zero padding `pad`) and horizontal flip; stateless given `seed` [2].

    Keras 3's RandomCrop draws one offset per call (the whole batch moves together) and keeps its seed state outside
    the checkpoint, so crop/flip are written here as vectorised stateless ops.
    """
    n, size = tf.shape(images)[0], images.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    offsets = tf.random.stateless_uniform([n, 2], seed=seeds[0], maxval=2 * pad + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(size)[None]  # [N, S]
    cols = offsets[:, 1:] + tf.range(size)[None]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    out = tf.gather(out, cols, axis=2, batch_dims=1)
    if flip:
        do_flip = tf.random.stateless_uniform([n, 1, 1, 1], seed=seeds[1]) < 0.5
        out = tf.where(do_flip, tf.reverse(out, axis=[2]), out)
    return out


def to_float(images: tf.Tensor) -> tf.Tensor:
    return tf.cast(images, tf.float32) / 255.0


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    transform: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], dict] | None = None,
    pad: int = 4,
    flip: bool = True,
    step_transform: Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, int], dict] | None = None,
) -> tf.data.Dataset:
    """Endless batches starting at global step `start_step`.

    Each element is `transform(images, labels, seed)` (default: {'inputs', 'labels'}) plus 'noise_seed' [B, 2]:
    row i is (step-derived seed, i), so each replica's slice carries a distinct seed for its attack's random start.

    Args:
      images: uint8 [N, H, W, 3]; labels: int [N].
      transform: pure TF (float images [B,H,W,3], labels [B], seed [2]) → dict of batch tensors.
      step_transform: used instead of `transform` when given, for inputs that change with training's progress
        (DynACL's augmentation strength): the same arguments, then the global step (int64 scalar) and the steps
        per epoch (int).
    """
    n = len(images)
    if global_batch_size > n:
        raise UsageError(f"batch size {global_batch_size} is larger than the {n} training images")
    steps_per_epoch = n // global_batch_size
    images_t = tf.constant(images)
    labels_t = tf.constant(labels.astype(np.int32))
    base = tf.constant([seed, 0], tf.int64)

    def epoch_batches(epoch):
        order = tf.argsort(tf.random.stateless_uniform([n], seed=base + [0, 1_000_003 * (epoch + 1)]))
        return tf.data.Dataset.from_tensor_slices(
            tf.reshape(order[: steps_per_epoch * global_batch_size], [steps_per_epoch, -1])
        )

    start_epoch = start_step // steps_per_epoch
    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_batches)
    # Skipping index batches is cheap: the gather/augment map runs after it.
    ds = ds.skip(start_step - start_epoch * steps_per_epoch)
    ds = tf.data.Dataset.zip(tf.data.Dataset.range(start_step, 2**62), ds)

    def make_batch(step, idx):
        step_seed = tf.stack([tf.constant(seed, tf.int64), step])
        aug_seed, task_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(step_seed, 3))
        x = augment(to_float(tf.gather(images_t, idx)), aug_seed, pad=pad, flip=flip)
        y = tf.gather(labels_t, idx)
        if step_transform is not None:
            batch = step_transform(x, y, task_seed, step, steps_per_epoch)
        elif transform is not None:
            batch = transform(x, y, task_seed)
        else:
            batch = {"inputs": x, "labels": y}
        noise = tf.stack(
            [tf.fill([global_batch_size], noise_seed[0]), tf.range(global_batch_size, dtype=tf.int64) + noise_seed[1]],
            1,
        )
        return {**batch, "noise_seed": noise}

    options = tf.data.Options()
    options.deterministic = True
    return ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE).with_options(options)


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """One pass in order, float images in [0, 1]; the last batch may be smaller."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32))).batch(batch_size)
    return ds.map(lambda x, y: {"inputs": to_float(x), "labels": y}, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def replica_slices(dataset: tf.data.Dataset, num_replicas: int, *, first: int, count: int) -> tf.data.Dataset:
    """Replicas `first`..`first+count-1`'s slices of every global batch, one element per replica and step.

    Replica r's slice of a batch is rows [r·B/R, (r+1)·B/R) of every tensor, as MirroredStrategy splits a batch
    over one process's devices; the batch size must be divisible by `num_replicas` (checked before training).
    """

    def slices(batch):
        return {k: tf.reshape(v, [num_replicas, -1, *v.shape[1:]])[first : first + count] for k, v in batch.items()}

    return dataset.map(slices).unbatch()
