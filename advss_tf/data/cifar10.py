"""CIFAR-10 from three sources: the bundled sample, the official binary files, TFDS (``--dataset=sample|binary|tfds``).

Every source gives uint8 ``images [N, 32, 32, 3]`` and int64 ``labels [N]``; the float [0, 1] conversion happens in
the input pipeline (``advss_tf.data.pipeline``).
"""

from __future__ import annotations

import os
from importlib import resources

import numpy as np

from advss_tf.data import cifar_binary, tfds_reader
from advss_tf.data.datasets import CIFAR10_SOURCES, DatasetInfo, DataSource, Split
from advss_tf.data.tfds_reader import tfds_prepared
from advss_tf.errors import UsageError

__all__ = ["DataSource", "load", "load_arrays", "tfds_prepared", "class_names", "sample_dir"]

RECORD_BYTES = 1 + cifar_binary.IMAGE_BYTES
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
SOURCES = CIFAR10_SOURCES
SPLITS = ("train", "test")
BINARY = cifar_binary.BinaryFormat(
    name="CIFAR-10",
    folder="cifar-10-batches-bin",
    archive="cifar-10-binary.tar.gz",
    files={"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
    label_bytes=1,
)
_SAMPLE_FILES = {"train": ("train.bin",), "test": ("test.bin",)}
TFDS_HOST = ("www.cs.toronto.edu", 443)


def sample_dir() -> str:
    """The folder of the real CIFAR-10 sample shipped with the package (1,500 train / 500 test images)."""
    return str(resources.files("advss_tf.data") / "sample")


def load(src: DataSource, split: str) -> Split:
    """One split of CIFAR-10 with its info (10 classes, 32x32)."""
    images, labels = load_arrays(src, split)
    return Split(images, labels, DatasetInfo("cifar10", NUM_CLASSES, IMAGE_SHAPE, tuple(class_names())), split)


def load_arrays(src: DataSource, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split of CIFAR-10 into memory.

    Args:
      src: the source.
      split: ``train`` (the official training set, before any train/validation carving) or ``test``.

    Returns:
      ``(images uint8 [N, 32, 32, 3], labels int64 [N])``.

    Raises:
      UsageError: with one line naming what was looked for and how to supply it.
    """
    if split not in SPLITS:
        raise UsageError(f"CIFAR-10 has no split {split!r}; valid: {', '.join(SPLITS)}")
    if src.source == "sample":
        paths = [os.path.join(sample_dir(), f) for f in _SAMPLE_FILES[split]]
        return cifar_binary.read_records(BINARY, paths, 0, NUM_CLASSES)
    if src.source == "binary":
        return cifar_binary.load_binary(BINARY, src.data_dir, split, 0, NUM_CLASSES, "--dataset=binary")
    if src.source == "tfds":
        images, labels, _ = tfds_reader.read(
            "cifar10",
            split,
            src.tfds_data_dir,
            host=TFDS_HOST,
            advice=", or use --dataset=binary --data_dir=<cifar-10-batches-bin or .tar.gz>",
        )
        return images, labels
    raise UsageError(f"--dataset={src.source} is not a CIFAR-10 source; valid: {', '.join(SOURCES)}")


def class_names() -> list[str]:
    with open(os.path.join(sample_dir(), "batches.meta.txt"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]
