"""CIFAR-10-C from three sources behind one interface, and its accuracies aggregated into metrics.

Sources: ``generate`` corrupts clean CIFAR-10 arrays with the built-in generator; ``npy`` reads a folder in the
official layout (``<corruption>.npy`` holding the 5 severities one after the other, severity 1 first, and
``labels.npy``), as published on Zenodo or written by ``tools/write_cifar10c.py``; ``tfds`` reads a prepared TFDS
``cifar10_corrupted`` and never downloads it. All return ``(images uint8 [N, 32, 32, 3], labels int64 [N])``.

CIFAR-100-C: ``npy`` reads the official CIFAR-100-C folder (the same layout, labels 0..99), and ``generate`` makes
it from the CIFAR-100 test images: the authors' repository has one CIFAR generator (``make_cifar_c.py``) whose
per-severity constants depend on neither the dataset nor its labels (docs/data.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from advss_tf.corruptions.cifar10c import (
    ALL_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    HEADLINE_CORRUPTIONS,
    SEVERITIES,
    check_corruption,
    corrupt,
)
from advss_tf.errors import UsageError

CIFAR10C_SOURCES = ("generate", "npy", "tfds")
NUM_CLASSES = 10  # CIFAR-10-C's; CIFAR-100-C passes num_classes=100
# TFDS names two corruptions otherwise than the .npy files do.
_TFDS_NAMES = {"glass_blur": "frosted_glass_blur", "elastic_transform": "elastic"}


def load_cifar10c(
    source: str,
    name: str,
    severity: int,
    *,
    data_dir: str | None = None,
    tfds_data_dir: str | None = None,
    clean_images: np.ndarray | None = None,
    clean_labels: np.ndarray | None = None,
    seed: int = 0,
    max_examples: int | None = None,
    num_classes: int = NUM_CLASSES,
) -> tuple[np.ndarray, np.ndarray]:
    """Reads (or makes) one CIFAR-10-C set: one corruption at one severity.

    Args:
      source: ``generate``, ``npy`` or ``tfds``.
      name: a corruption of ``ALL_CORRUPTIONS`` (the .npy file names: ``glass_blur``, ``elastic_transform``).
      severity: 1..5.
      data_dir: ``npy``: the folder of the .npy files (or its parent holding ``CIFAR-10-C/``).
      tfds_data_dir: ``tfds``: the TFDS data folder (None: TFDS's default).
      clean_images: ``generate``: uint8 ``[N, 32, 32, 3]`` to corrupt.
      clean_labels: ``generate``: their labels ``[N]``.
      seed: ``generate``: the generator's seed.
      max_examples: keep the first this many examples (None: all).
      num_classes: ``npy``: the labels must be below it (100 for CIFAR-100-C).

    Returns:
      ``(images uint8 [N, 32, 32, 3], labels int64 [N])``.

    Raises:
      UsageError: with one line naming what was wrong or looked for.
    """
    if source not in CIFAR10C_SOURCES:
        raise UsageError(f"unknown CIFAR-10-C source {source!r}; valid: {', '.join(CIFAR10C_SOURCES)}")
    check_corruption(name, severity)
    if max_examples is not None and max_examples <= 0:
        raise UsageError(f"max_examples must be positive or None, got {max_examples}")
    if source == "generate":
        return _generate(name, severity, clean_images, clean_labels, seed, max_examples)
    if source == "npy":
        return _load_npy(data_dir, name, severity, max_examples, num_classes)
    return _load_tfds(tfds_data_dir, name, severity, max_examples)


def aggregate_cifar10c(accuracy: Mapping[tuple[str, int], float]) -> dict[str, float]:
    """Turns per-set accuracies into the flat metric dict (uncertainty-baselines keys).

    Args:
      accuracy: ``{(corruption, severity): accuracy}`` for the sets evaluated (any subset).

    Returns:
      ``corrupt/<name>_<s>/accuracy`` per set; ``corrupt/<name>/accuracy``, the mean over its severities;
      ``corrupt/severity_<s>/accuracy``, the mean over the headline corruptions at that severity;
      ``corrupt/mean_accuracy``, the headline: the mean over the 15 x 5 headline sets present;
      ``corrupt/extra_mean_accuracy``, the mean over the extra sets present. A mean over nothing is left out.

    Raises:
      UsageError: a key that is not a (corruption, severity) of CIFAR-10-C.
    """
    for name, severity in accuracy:
        check_corruption(name, severity)
    ordered = sorted(accuracy.items(), key=lambda item: (ALL_CORRUPTIONS.index(item[0][0]), item[0][1]))
    metrics = {f"corrupt/{name}_{severity}/accuracy": float(value) for (name, severity), value in ordered}

    def add_mean(key: str, values: list[float]) -> None:
        if values:
            metrics[key] = float(np.mean(values))

    for corruption in ALL_CORRUPTIONS:
        add_mean(f"corrupt/{corruption}/accuracy", [v for (n, _), v in ordered if n == corruption])
    for level in SEVERITIES:
        add_mean(
            f"corrupt/severity_{level}/accuracy",
            [v for (n, s), v in ordered if s == level and n in HEADLINE_CORRUPTIONS],
        )
    add_mean("corrupt/mean_accuracy", [v for (n, _), v in ordered if n in HEADLINE_CORRUPTIONS])
    add_mean("corrupt/extra_mean_accuracy", [v for (n, _), v in ordered if n in EXTRA_CORRUPTIONS])
    return metrics


def _generate(
    name: str,
    severity: int,
    clean_images: np.ndarray | None,
    clean_labels: np.ndarray | None,
    seed: int,
    max_examples: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    if clean_images is None or clean_labels is None:
        raise UsageError("CIFAR-10-C source 'generate' needs clean_images and clean_labels (a CIFAR-10 split)")
    if len(clean_images) != len(clean_labels):
        raise UsageError(f"clean_images has {len(clean_images)} examples but clean_labels {len(clean_labels)}")
    images, labels = clean_images[:max_examples], np.asarray(clean_labels[:max_examples], np.int64)
    return corrupt(images, name, severity, seed), labels


def _load_npy(
    data_dir: str | None, name: str, severity: int, max_examples: int | None, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    if not data_dir:
        raise UsageError("CIFAR-10-C source 'npy' needs data_dir: the CIFAR-10-C folder of <corruption>.npy files")
    folder = data_dir
    for nested in (os.path.join(data_dir, "CIFAR-10-C"), os.path.join(data_dir, "CIFAR-100-C")):
        if not os.path.exists(os.path.join(folder, f"{name}.npy")) and os.path.isdir(nested):
            folder = nested
    images_path, labels_path = os.path.join(folder, f"{name}.npy"), os.path.join(folder, "labels.npy")
    for path in (images_path, labels_path):
        if not os.path.isfile(path):
            raise UsageError(
                f"CIFAR-10-C file {path} not found; data_dir must hold <corruption>.npy and labels.npy "
                "(the official CIFAR-10-C folder, or the output of tools/write_cifar10c.py)"
            )
    images = _open_npy(images_path)
    if (
        images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[1:] != (32, 32, 3)
        or len(images) % 5
        or not len(images)
    ):
        raise UsageError(
            f"{images_path} holds {images.dtype} {list(images.shape)}; expected uint8 [5 * N, 32, 32, 3] "
            "(the 5 severities one after the other)"
        )
    per_severity = len(images) // 5
    labels = _open_npy(labels_path)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) not in (len(images), per_severity):
        raise UsageError(
            f"{labels_path} holds {labels.dtype} {list(labels.shape)}; expected integer labels [{len(images)}] "
            f"to match {images_path}"
        )
    offset = (severity - 1) * per_severity
    count = per_severity if max_examples is None else min(per_severity, max_examples)
    # The official labels.npy repeats the N labels once per severity; a plain [N] file is accepted too.
    label_offset = offset if len(labels) == len(images) else 0
    labels = np.asarray(labels[label_offset : label_offset + count], np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UsageError(
            f"{labels_path} holds labels outside 0..{num_classes - 1}: not labels of the test data's {num_classes} "
            "classes"
        )
    return np.array(images[offset : offset + count]), labels


def _open_npy(path: str) -> np.ndarray:
    """Memory-maps a .npy file (only the severity wanted is read), or raises UsageError with one line."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{path} is not a readable .npy file: {reason}") from None


def _load_tfds(
    tfds_data_dir: str | None, name: str, severity: int, max_examples: int | None
) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    from advss_tf.data.tfds_reader import tfds_prepared

    config = f"{_TFDS_NAMES.get(name, name)}_{severity}"
    builder = tfds.builder(f"cifar10_corrupted/{config}", data_dir=tfds_data_dir)
    # Never download here: the archive is 2.9 GB and an offline download hangs for minutes.
    if not tfds_prepared(builder):
        raise UsageError(
            f"TFDS cifar10_corrupted/{config} is not prepared in {builder.data_dir}; build it first "
            f"(tfds build cifar10_corrupted --config={config}) or use the npy source with the CIFAR-10-C folder"
        )
    split = "test" if max_examples is None else f"test[:{max_examples}]"
    images, labels = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
    return np.asarray(images, np.uint8), np.asarray(labels, np.int64)
