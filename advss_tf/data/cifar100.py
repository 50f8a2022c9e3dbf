"""CIFAR-100 from TFDS (``cifar100``) or the official binary files (``--data_dir``: cifar-100-binary or its .tar.gz).

Each binary record carries two label bytes, the coarse (20 superclasses) and the fine (100 classes) label, then
the image; ``--label=fine|coarse`` picks one (TFDS: ``label`` and ``coarse_label``).
"""

from __future__ import annotations

import os

from advss_tf.data import cifar_binary, tfds_reader
from advss_tf.data.datasets import DatasetInfo, DataSource, Split, check_split_name

NUM_CLASSES = {"fine": 100, "coarse": 20}
IMAGE_SHAPE = (32, 32, 3)
SPLITS = ("train", "test")
BINARY = cifar_binary.BinaryFormat(
    name="CIFAR-100",
    folder="cifar-100-binary",
    archive="cifar-100-binary.tar.gz",
    files={"train": ("train.bin",), "test": ("test.bin",)},
    label_bytes=2,
)
_LABEL_BYTE = {"coarse": 0, "fine": 1}
_TFDS_LABEL = {"fine": "label", "coarse": "coarse_label"}
_NAME_FILES = {"fine": "fine_label_names.txt", "coarse": "coarse_label_names.txt"}
TFDS_HOST = ("www.cs.toronto.edu", 443)


def load(src: DataSource, split: str) -> Split:
    """One split of CIFAR-100 with the label set `src.label` names."""
    (split,) = check_split_name(split, SPLITS, "CIFAR-100")
    num_classes = NUM_CLASSES[src.label]
    name = "cifar100" if src.label == "fine" else "cifar100_coarse"
    if src.data_dir:
        images, labels = cifar_binary.load_binary(
            BINARY, src.data_dir, split, _LABEL_BYTE[src.label], num_classes, "--dataset=cifar100"
        )
        names = _binary_class_names(src.data_dir, src.label, num_classes)
    else:
        key = _TFDS_LABEL[src.label]
        images, labels, info = tfds_reader.read(
            "cifar100",
            split,
            src.tfds_data_dir,
            host=TFDS_HOST,
            label_key=key,
            advice=", or give the official binary files with --data_dir=<cifar-100-binary or .tar.gz>",
        )
        names = tfds_reader.class_names(info, key)
    return Split(images, labels, DatasetInfo(name, num_classes, IMAGE_SHAPE, names), split)


def _binary_class_names(data_dir: str, label: str, num_classes: int) -> tuple[str, ...]:
    """The names from <label>_label_names.txt next to the records, or the class numbers when it is absent."""
    for folder in (data_dir, os.path.join(data_dir, BINARY.folder)):
        path = os.path.join(folder, _NAME_FILES[label])
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                names = tuple(line.strip() for line in f if line.strip())
            if len(names) == num_classes:
                return names
    return tuple(str(i) for i in range(num_classes))
