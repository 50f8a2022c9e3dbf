"""SVHN, the cropped-digits version (TFDS ``svhn_cropped``): 32x32, 10 classes (digit 0 is class 0)."""

from __future__ import annotations

from advss_tf.data import tfds_reader
from advss_tf.data.datasets import DatasetInfo, DataSource, Split, check_split_name

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
SPLITS = ("train", "test", "extra")
TFDS_HOST = ("ufldl.stanford.edu", 80)


def load(src: DataSource, split: str) -> Split:
    check_split_name(split, SPLITS, "SVHN")
    images, labels, _ = tfds_reader.read("svhn_cropped", split, src.tfds_data_dir, host=TFDS_HOST)
    names = tuple(str(d) for d in range(NUM_CLASSES))
    return Split(images, labels, DatasetInfo("svhn", NUM_CLASSES, IMAGE_SHAPE, names), split)
