"""The dataset interface beyond CIFAR-10: CIFAR-100 (binary files and TFDS), SVHN, STL-10 and image folders.

Nothing downloads: TFDS through `tfds.testing.mock_data` (the mocked builder has no files, so the bounded host probe
is stubbed to say "reachable" and the mocked download is a no-op), folders and binary files written by the tests.
"""

import dataclasses
import json
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from advss_tf import config as config_lib
from advss_tf.data import datasets, tfds_reader
from advss_tf.data.datasets import DataSource
from advss_tf.errors import UsageError


# -- helpers -----------------------------------------------------------------------------------------------------------
def write_image(path, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    encode = tf.io.encode_png if path.endswith(".png") else tf.io.encode_jpeg
    tf.io.write_file(path, encode(image))


def class_images(count: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, [count, size, size, 3], dtype=np.uint8)


def write_labelled_folder(root, classes=("cat", "dog", "frog"), per_class=4, size=32, seed=0) -> str:
    for c, name in enumerate(classes):
        for i, image in enumerate(class_images(per_class, size, seed + c)):
            ext = "png" if i % 2 == 0 else "jpg"  # both formats in one class
            write_image(os.path.join(str(root), name, f"{i}.{ext}"), image)
    return str(root)


def write_cifar100_binary(folder, n: int, seed: int, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Official-layout records: coarse byte, fine byte, R, G, B planes."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 20, n, dtype=np.uint8)
    fine = rng.integers(0, 100, n, dtype=np.uint8)
    images = rng.integers(0, 256, [n, 32, 32, 3], dtype=np.uint8)
    planes = images.transpose(0, 3, 1, 2).reshape(n, -1)
    records = np.concatenate([coarse[:, None], fine[:, None], planes], axis=1)
    os.makedirs(folder, exist_ok=True)
    records.tofile(os.path.join(folder, name))
    return images, coarse, fine


@pytest.fixture
def mock_tfds(monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds_reader, "_reachable", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=6):
        yield


# -- CIFAR-100 --------------------------------------------------------------------------------------------------------
def test_cifar100_binary_records_carry_a_coarse_and_a_fine_label(tmp_path):
    folder = str(tmp_path / "cifar-100-binary")
    images, coarse, fine = write_cifar100_binary(folder, 7, seed=1, name="test.bin")
    with open(os.path.join(folder, "fine_label_names.txt"), "w") as f:
        f.write("\n".join(f"fine{i}" for i in range(100)))
    split = datasets.load(DataSource("cifar100", str(tmp_path)), "test")  # the parent folder works too
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, fine)
    assert split.info.num_classes == 100 and split.info.image_shape == (32, 32, 3) and split.info.name == "cifar100"
    assert split.info.class_names[fine[0]] == f"fine{fine[0]}"
    coarse_split = datasets.load(DataSource("cifar100", folder, label="coarse"), "test")
    np.testing.assert_array_equal(coarse_split.labels, coarse)
    assert coarse_split.info.num_classes == 20 and coarse_split.info.title == "CIFAR-100 (coarse labels)"
    # The official archive gives the same records.
    archive = tmp_path / "cifar-100-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(os.path.join(folder, "test.bin"), arcname="cifar-100-binary/test.bin")
    np.testing.assert_array_equal(datasets.load(DataSource("cifar100", str(archive)), "test").labels, fine)


def test_cifar10_binary_files_are_not_cifar100(tmp_path):
    with pytest.raises(UsageError, match="not found; --data_dir must hold test.bin"):
        datasets.load(DataSource("cifar100", str(tmp_path)), "test")
    (tmp_path / "test.bin").write_bytes(b"\0" * 3073 * 2)  # CIFAR-10's record size
    with pytest.raises(UsageError, match="not a multiple of 3074-byte records"):
        datasets.load(DataSource("cifar100", str(tmp_path)), "test")


def test_label_coarse_is_cifar100_only():
    with pytest.raises(UsageError, match="CIFAR-100's"):
        DataSource("sample", label="coarse")


def test_cifar100_svhn_and_stl10_from_mocked_tfds(mock_tfds):
    fine = datasets.load(DataSource("cifar100"), "train")
    coarse = datasets.load(DataSource("cifar100", label="coarse"), "train")
    assert fine.info.num_classes == 100 and len(fine.info.class_names) == 100 and fine.images.shape == (6, 32, 32, 3)
    assert coarse.info.num_classes == 20 and coarse.labels.max() < 20
    svhn = datasets.load(DataSource("svhn"), "test")
    assert svhn.info.name == "svhn" and svhn.info.num_classes == 10 and svhn.images.dtype == np.uint8
    stl = datasets.load(DataSource("stl10"), "train")
    assert stl.info.image_shape == (96, 96, 3) and stl.info.labelled and stl.labels.min() >= 0
    unlabelled = datasets.load(DataSource("stl10"), "unlabelled")
    assert not unlabelled.info.labelled and set(unlabelled.labels) == {datasets.UNLABELLED}
    both = datasets.load(DataSource("stl10"), "train+unlabelled")  # (the mock gives 6 examples for any split)
    assert len(both) and not both.info.labelled
    with pytest.raises(UsageError, match="fine-tuning needs labelled images"):
        datasets.require_labelled(unlabelled, DataSource("stl10"), "fine-tuning")
    with pytest.raises(UsageError, match="STL-10 has no split 'unlabeled'; valid: train, test, unlabelled"):
        datasets.load(DataSource("stl10"), "unlabeled")
    # --image_size resizes any source, in tf.data.
    small = datasets.load(DataSource("stl10", image_size=32), "test")
    assert small.images.shape == (6, 32, 32, 3) and small.info.image_shape == (32, 32, 3)
    images, labels = next(iter(small.dataset(batch_size=4)))
    assert images.shape == (4, 32, 32, 3) and images.dtype == tf.float32 and float(tf.reduce_max(images)) <= 1.0


def test_unprepared_tfds_offline_and_unknown_names_fail_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_reader, "_reachable", lambda *a, **k: False)
    with pytest.raises(UsageError, match="unreachable.*--data_dir=<cifar-100-binary") as e:
        datasets.load(DataSource("cifar100", tfds_data_dir=str(tmp_path)), "test")
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="TFDS does not know a dataset 'no_such_images'"):
        tfds_reader.builder("no_such_images", str(tmp_path))


# -- image folders ----------------------------------------------------------------------------------------------------
def test_a_labelled_folder_reads_classes_in_name_order(tmp_path):
    root = write_labelled_folder(tmp_path / "pets")
    split = datasets.load(DataSource("folder", root), "train")
    assert split.info.class_names == ("cat", "dog", "frog") and split.info.num_classes == 3
    assert split.info.name == "folder:pets" and split.images.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(split.labels, np.repeat([0, 1, 2], 4))
    # PNG round-trips exactly: the first cat is the first image written.
    np.testing.assert_array_equal(split.images[0], class_images(4, 32, 0)[0])


def test_train_and_test_folders_share_the_training_classes(tmp_path):
    write_labelled_folder(tmp_path / "train", classes=("a", "b", "c"))
    write_labelled_folder(tmp_path / "test", classes=("b", "c"), seed=5)  # no test images of class a
    test = datasets.load(DataSource("folder", str(tmp_path)), "test")
    assert test.info.num_classes == 3
    np.testing.assert_array_equal(test.labels, np.repeat([1, 2], 4))
    write_labelled_folder(tmp_path / "test", classes=("zebra",), seed=9)
    with pytest.raises(UsageError, match="class folders the training split lacks: zebra"):
        datasets.load(DataSource("folder", str(tmp_path)), "test")


def test_loose_images_are_an_unlabelled_folder(tmp_path):
    for i, image in enumerate(class_images(3, 96, 1)):
        write_image(str(tmp_path / "photos" / f"{i}.png"), image)
    write_image(str(tmp_path / "photos" / "more" / "x.jpg"), class_images(1, 96, 2)[0])
    split = datasets.load(DataSource("folder", str(tmp_path / "photos")), "train")
    assert not split.info.labelled and split.images.shape == (4, 96, 96, 3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: os.makedirs(d / "empty" / "a"), "holds no images"),
        (lambda d: write_labelled_folder(d / "one", classes=("only",)), "at least 2 classes; .* has 1"),
        (
            lambda d: [
                write_image(str(d / "mixed" / "a" / "0.png"), class_images(1, 32, 0)[0]),
                write_image(str(d / "mixed" / "b" / "0.png"), class_images(1, 40, 0)[0]),
            ],
            r"different sizes \(32x32 and 40x40\); pass --image_size",
        ),
        (
            lambda d: (os.makedirs(d / "broken" / "a"), (d / "broken" / "a" / "0.png").write_bytes(b"not a png")),
            "cannot be decoded",
        ),
    ],
)
def test_bad_folders_are_one_line_errors(tmp_path, make, message):
    make(tmp_path)
    root = str(tmp_path / os.listdir(tmp_path)[0])
    with pytest.raises(UsageError, match=message) as e:
        split = datasets.load(DataSource("folder", root), "train")
        datasets.require_labelled(split, DataSource("folder", root), "fine-tuning")
    assert "\n" not in str(e.value)


def test_image_size_resizes_mixed_folders(tmp_path):
    write_image(str(tmp_path / "a" / "0.png"), class_images(1, 32, 0)[0])
    write_image(str(tmp_path / "b" / "0.png"), class_images(1, 40, 0)[0])
    split = datasets.load(DataSource("folder", str(tmp_path), image_size=24), "train")
    assert split.images.shape == (2, 24, 24, 3) and split.info.image_shape == (24, 24, 3)


# -- the recorded config ----------------------------------------------------------------------------------------------
def test_a_config_recorded_before_the_new_data_fields_still_resumes(tmp_path):
    from advss_tf import workspace
    from advss_tf.config import PretrainConfig

    cfg = PretrainConfig(task="rotation", model_dir=str(tmp_path))
    old = json.loads(config_lib.dumps(cfg))
    old["data"] = {"source": "sample", "data_dir": None, "tfds_data_dir": None}  # what older versions wrote
    workspace.write_json(str(tmp_path / "config.json"), old)
    os.makedirs(tmp_path / "checkpoints")
    assert workspace.prepare(str(tmp_path), cfg, overwrite=False, data_info={"num_classes": 10})
    other = PretrainConfig(task="rotation", model_dir=str(tmp_path), data=DataSource("sample", image_size=16))
    with pytest.raises(UsageError, match="differs in: data"):
        workspace.prepare(str(tmp_path), other, overwrite=False)


def test_a_config_recorded_before_a_field_was_added_resumes_at_its_default_only(tmp_path):
    """A config.json without a top-level field added later meant the field's default (the rule for adding one)."""
    from advss_tf import workspace
    from advss_tf.config import FinetuneConfig

    cfg = FinetuneConfig(model_dir=str(tmp_path))
    old = json.loads(config_lib.dumps(cfg))
    del old["val_examples"], old["trades_beta"]  # as if written before these two existed
    workspace.write_json(str(tmp_path / "config.json"), old)
    os.makedirs(tmp_path / "checkpoints")
    assert workspace.prepare(str(tmp_path), cfg, overwrite=False)
    other = dataclasses.replace(cfg, trades_beta=cfg.trades_beta + 1.0)
    with pytest.raises(UsageError, match="differs in: trades_beta"):
        workspace.prepare(str(tmp_path), other, overwrite=False)
