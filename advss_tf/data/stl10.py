"""STL-10 (TFDS ``stl10``): 96x96, 10 classes; 5,000 labelled training images, 8,000 test images, and 100,000
``unlabelled`` ones for self-supervised pretraining (``--train_split=unlabelled`` or ``train+unlabelled``)."""

from __future__ import annotations

import numpy as np

from advss_tf.data import tfds_reader
from advss_tf.data.datasets import UNLABELLED, DatasetInfo, DataSource, Split, check_split_name

NUM_CLASSES = 10
IMAGE_SHAPE = (96, 96, 3)
SPLITS = ("train", "test", "unlabelled")
LABELLED_SPLITS = ("train", "test")
TFDS_HOST = ("ai.stanford.edu", 80)


def load(src: DataSource, split: str) -> Split:
    parts = check_split_name(split, SPLITS, "STL-10")
    images, labels, info = tfds_reader.read("stl10", "+".join(parts), src.tfds_data_dir, host=TFDS_HOST)
    if all(p in LABELLED_SPLITS for p in parts):
        names = tfds_reader.class_names(info)
        return Split(images, labels, DatasetInfo("stl10", NUM_CLASSES, IMAGE_SHAPE, names), split)
    # Any unlabelled part makes the whole split unlabelled: its labels are not all known.
    return Split(images, np.full(len(images), UNLABELLED, np.int64), DatasetInfo("stl10", None, IMAGE_SHAPE), split)
