"""CIFAR-10 sources, split, subsets and augmentation."""

import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from conftest import SHARED_DATA

from advss_tf.data import cifar10, pipeline, tfds_reader
from advss_tf.errors import UsageError

SUBSET = os.path.join(SHARED_DATA, "cifar10-subset")


def test_binary_folder_reads_the_shared_subset_as_is():
    x, y = cifar10.load_arrays(cifar10.DataSource("binary", SUBSET), "train")
    assert x.shape == (5085, 32, 32, 3) and x.dtype == np.uint8 and y.shape == (5085,)
    xt, yt = cifar10.load_arrays(cifar10.DataSource("binary", SUBSET), "test")
    assert xt.shape == (508, 32, 32, 3)
    # The official test batch starts cat, ship, ship, airplane.
    assert list(yt[:4]) == [3, 8, 8, 0]


def test_tarball_gives_the_same_images(tmp_path):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(os.path.join(SUBSET, "test_batch.bin"), arcname="cifar-10-batches-bin/test_batch.bin")
    x, y = cifar10.load_arrays(cifar10.DataSource("binary", str(archive)), "test")
    x2, y2 = cifar10.load_arrays(cifar10.DataSource("binary", SUBSET), "test")
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_bundled_sample_is_real_cifar10():
    x, y = cifar10.load_arrays(cifar10.DataSource(), "train")
    xs, ys = cifar10.load_arrays(cifar10.DataSource("binary", SUBSET), "train")
    assert x.shape == (1500, 32, 32, 3)
    np.testing.assert_array_equal(x[:300], xs[:300])  # first 300 of data_batch_1
    assert set(np.unique(y)) == set(range(10))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: os.makedirs(d), "not found"),
        (lambda d: (os.makedirs(d), open(os.path.join(d, "test_batch.bin"), "wb").write(b"\0" * 3000)), "truncated"),
    ],
)
def test_missing_or_truncated_data_is_a_one_line_error(tmp_path, make, message):
    d = str(tmp_path / "cifar")
    make(d)
    with pytest.raises(UsageError, match=message) as e:
        cifar10.load_arrays(cifar10.DataSource("binary", d), "test")
    assert "\n" not in str(e.value)


def test_offline_tfds_fails_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_reader, "_reachable", lambda *a, **k: False)
    with pytest.raises(UsageError, match="--dataset=binary"):
        cifar10.load_arrays(cifar10.DataSource("tfds", tfds_data_dir=str(tmp_path)), "train")


def test_split_is_seeded_disjoint_and_ten_percent():
    labels = np.arange(1000) % 10
    tr, va = pipeline.train_val_split(labels, seed=3)
    assert len(va) == 100 and len(tr) == 900 and not set(tr) & set(va)
    tr2, va2 = pipeline.train_val_split(labels, seed=3)
    np.testing.assert_array_equal(va, va2)


def test_train_fraction_is_class_balanced():
    labels = np.repeat(np.arange(10), 50)
    keep = pipeline.class_balanced_subset(labels, np.arange(500), 0.2, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[keep]), [10] * 10)


def test_augment_is_per_image_stateless_and_a_padded_crop():
    x = tf.random.uniform([16, 32, 32, 3], seed=1)
    a = pipeline.augment(x, tf.constant([1, 2], tf.int64))
    b = pipeline.augment(x, tf.constant([1, 2], tf.int64))
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape
    # Different images get different crops: not all the per-image shifts are the same.
    pad = np.pad(x.numpy(), [(0, 0), (4, 4), (4, 4), (0, 0)])
    offsets = set()
    for i in range(16):
        for dy in range(9):
            for dx in range(9):
                crop = pad[i, dy : dy + 32, dx : dx + 32]
                if np.array_equal(crop, a[i]) or np.array_equal(crop[:, ::-1], a[i]):
                    offsets.add((dy, dx))
                    break
    assert len(offsets) > 3


def test_train_dataset_resumes_at_the_same_batch():
    x = (np.arange(64 * 32 * 32 * 3) % 251).astype(np.uint8).reshape(64, 32, 32, 3)
    y = np.arange(64) % 10
    full = list(pipeline.train_dataset(x, y, global_batch_size=8, seed=5).take(12).as_numpy_iterator())
    resumed = list(pipeline.train_dataset(x, y, global_batch_size=8, seed=5, start_step=9).take(3).as_numpy_iterator())
    for a, b in zip(full[9:], resumed):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
