"""The one dataset interface every binary reads: which images (`DataSource`), what they hold (`DatasetInfo`), and
one split of them in memory (`Split`).

Each source is a small module with ``load(src, split) -> Split``: ``cifar10`` (the bundled sample, the official
binary files, TFDS), ``cifar100`` (TFDS or the official binary files, fine or coarse labels), ``svhn`` (TFDS
``svhn_cropped``), ``stl10`` (TFDS, 96x96, with its unlabelled split) and ``folder`` (your own images). A split is
uint8 images [N, H, W, 3] and int64 labels [N] (all ``UNLABELLED`` when the images carry none), plus the facts the
rest of the code reads instead of constants: the dataset's name, class count and image shape.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import numpy as np
import tensorflow as tf

from advss_tf.errors import UsageError

CIFAR10_SOURCES = ("sample", "binary", "tfds")  # --dataset values that mean CIFAR-10 (the project's first three)
DATASETS = (*CIFAR10_SOURCES, "cifar100", "svhn", "stl10", "folder")  # every --dataset value
LABELS = ("fine", "coarse")  # CIFAR-100's two label sets
UNLABELLED = -1  # the label of an image that has none
# The source module that reads each dataset.
_MODULES = {
    "cifar10": "advss_tf.data.cifar10",
    "cifar100": "advss_tf.data.cifar100",
    "svhn": "advss_tf.data.svhn",
    "stl10": "advss_tf.data.stl10",
    "folder": "advss_tf.data.folder",
}
_TITLES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "cifar100_coarse": "CIFAR-100 (coarse labels)",
    "svhn": "SVHN",
    "stl10": "STL-10",
}
# DataSource fields added after runs were first recorded: a config.json without them meant these values, so a run
# recorded before they existed still resumes (`advss_tf.config.identity`).
LEGACY_DEFAULTS = {"label": "fine", "image_size": 0, "train_split": "train"}


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Which images: the ``--dataset`` source, where it lives, and how to read it.

    Attributes:
      source: one of DATASETS; ``sample``, ``binary`` and ``tfds`` are CIFAR-10's three sources.
      data_dir: ``binary``: cifar-10-batches-bin (or its .tar.gz); ``cifar100``: cifar-100-binary (or its .tar.gz),
        TFDS without it; ``folder``: the image folder.
      tfds_data_dir: the TFDS data directory (None: TFDS's default).
      label: CIFAR-100's label set, ``fine`` (100 classes) or ``coarse`` (20).
      image_size: > 0: resize every image to image_size x image_size; 0: keep the images' own size.
      train_split: the split training reads (pretraining on STL-10: ``unlabelled`` or ``train+unlabelled``).
    """

    source: str = "sample"
    data_dir: str | None = None
    tfds_data_dir: str | None = None
    label: str = "fine"
    image_size: int = 0
    train_split: str = "train"

    def __post_init__(self):
        if self.source not in DATASETS:
            raise UsageError(f"unknown dataset {self.source!r}; valid: {', '.join(DATASETS)}")
        if self.label not in LABELS:
            raise UsageError(f"unknown label set {self.label!r}; valid: {', '.join(LABELS)}")
        if self.label != "fine" and self.source != "cifar100":
            raise UsageError(f"--label={self.label} is CIFAR-100's; --dataset={self.source} has one label set")
        if self.image_size < 0:
            raise UsageError(f"--image_size must be >= 0 (0: the images' own size), got {self.image_size}")
        if self.source == "folder" and not self.data_dir:
            raise UsageError("--dataset=folder needs --data_dir: a folder of images (<class>/ subfolders if labelled)")
        if self.data_dir and self.source not in ("binary", "cifar100", "folder"):
            raise UsageError(
                f"--data_dir does not go with --dataset={self.source} (it reads CIFAR-10 or CIFAR-100 binary files "
                "or an image folder; TFDS uses --tfds_data_dir)"
            )

    @property
    def dataset(self) -> str:
        """The dataset's name: cifar10, cifar100, svhn, stl10 or folder."""
        return "cifar10" if self.source in CIFAR10_SOURCES else self.source


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a split holds: the rest of the code reads these facts instead of constants.

    Attributes:
      name: the dataset (``cifar100``, ``cifar100_coarse``, ``stl10``, ``folder:<folder name>``, ...).
      num_classes: the class count; None when the images carry no labels.
      image_shape: (height, width, 3).
      class_names: one name per class (empty when unlabelled).
    """

    name: str
    num_classes: int | None
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        if self.num_classes is not None and len(self.class_names) != self.num_classes:
            object.__setattr__(self, "class_names", tuple(str(i) for i in range(self.num_classes)))

    @property
    def labelled(self) -> bool:
        return self.num_classes is not None

    @property
    def title(self) -> str:
        """The name as papers write it (CIFAR-100, STL-10, image folder x), for reports."""
        if self.name.startswith("folder:"):
            return f"image folder {self.name.split(':', 1)[1]}"
        return _TITLES.get(self.name, self.name)

    def to_dict(self) -> dict[str, Any]:
        """What config.json, exports and results record about the data."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "labelled": self.labelled,
        }


@dataclasses.dataclass(frozen=True)
class Split:
    """One split in memory: uint8 images [N, H, W, 3], int64 labels [N] (UNLABELLED when unlabelled), its info."""

    images: np.ndarray
    labels: np.ndarray
    info: DatasetInfo
    split: str

    def __len__(self) -> int:
        return len(self.images)

    def dataset(self, batch_size: int | None = None) -> tf.data.Dataset:
        """(float32 image in [0, 1], int32 label) pairs in order; batched when `batch_size` is given."""
        ds = tf.data.Dataset.from_tensor_slices((self.images, self.labels.astype(np.int32)))
        if batch_size:
            ds = ds.batch(batch_size)
        return ds.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y))


def load(src: DataSource, split: str) -> Split:
    """Reads one split of the dataset `src` names, resized to `src.image_size` when it is set.

    Raises:
      UsageError: with one line naming what was looked for and how to supply it.
    """
    module = importlib.import_module(_MODULES[src.dataset])
    out = module.load(src, split)
    if src.image_size and out.images.shape[1:3] != (src.image_size, src.image_size):
        images = resize(out.images, src.image_size)
        out = dataclasses.replace(
            out, images=images, info=dataclasses.replace(out.info, image_shape=tuple(images.shape[1:]))
        )
    return out


def require_labelled(split: Split, src: DataSource, purpose: str) -> None:
    """UsageError unless `split` has labels of at least two classes (what `purpose` needs)."""
    if not split.info.labelled:
        raise UsageError(
            f"{purpose} needs labelled images; {describe(src)} split {split.split!r} has none "
            "(pretrain on it, then fine-tune on a labelled split)"
        )
    if split.info.num_classes < 2:
        raise UsageError(f"{purpose} needs at least 2 classes; {describe(src)} has {split.info.num_classes}")


def describe(src: DataSource) -> str:
    """The source as a user names it on the command line, for messages."""
    where = f" --data_dir={src.data_dir}" if src.data_dir else ""
    return f"--dataset={src.source}{where}"


def resize(images: np.ndarray, size: int, batch_size: int = 256) -> np.ndarray:
    """uint8 [N, H, W, 3] → uint8 [N, size, size, 3], antialiased bilinear, in tf.data."""
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    ds = ds.map(lambda x: resize_tensor(x, size), num_parallel_calls=tf.data.AUTOTUNE)
    chunks = list(ds.as_numpy_iterator())
    return np.concatenate(chunks) if chunks else np.zeros([0, size, size, 3], np.uint8)


def resize_tensor(images: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 images [..., H, W, 3] → uint8 [..., size, size, 3] (antialiased bilinear, rounded)."""
    out = tf.image.resize(tf.cast(images, tf.float32), [size, size], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def check_split_name(split: str, valid: tuple[str, ...], dataset: str) -> tuple[str, ...]:
    """The parts of `split` ('train', or 'train+unlabelled'), each one of `valid`; UsageError otherwise."""
    parts = tuple(p.strip() for p in split.split("+"))
    bad = [p for p in parts if p not in valid]
    if bad or not parts:
        raise UsageError(f"{dataset} has no split {split!r}; valid: {', '.join(valid)} (or several joined by +)")
    return parts
