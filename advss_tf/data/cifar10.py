"""CIFAR-10 from three sources behind one interface: the bundled sample, the official binary files, TFDS.

Every source returns uint8 arrays ``images [N, 32, 32, 3]`` and int64 ``labels [N]``; the float [0, 1]
conversion happens in the input pipeline (``advss_tf.data.pipeline``). The python-format batches are never read:
unpickling runs code.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tarfile
import tempfile
from importlib import resources

import numpy as np
import tensorflow as tf

from advss_tf.errors import UsageError

RECORD_BYTES = 1 + 32 * 32 * 3
NUM_CLASSES = 10
SOURCES = ("sample", "binary", "tfds")
SPLITS = ("train", "test")
_BINARY_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
_SAMPLE_FILES = {"train": ("train.bin",), "test": ("test.bin",)}
_TFDS_HOST = ("www.cs.toronto.edu", 443)


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where CIFAR-10 comes from: ``sample`` (bundled), ``binary`` (``data_dir``) or ``tfds``."""

    source: str = "sample"
    data_dir: str | None = None
    tfds_data_dir: str | None = None


def sample_dir() -> str:
    """The folder of the real CIFAR-10 sample shipped with the package (1,500 train / 500 test images)."""
    return str(resources.files("advss_tf.data") / "sample")


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
        raise UsageError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if src.source == "sample":
        paths = [os.path.join(sample_dir(), f) for f in _SAMPLE_FILES[split]]
        return _read_records(paths)
    if src.source == "binary":
        return _load_binary(src.data_dir, split)
    if src.source == "tfds":
        return _load_tfds(src.tfds_data_dir, split)
    raise UsageError(f"unknown dataset source {src.source!r}; valid: {', '.join(SOURCES)}")


def _load_binary(data_dir: str | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    if not data_dir:
        raise UsageError("--dataset=binary needs --data_dir: a cifar-10-batches-bin folder or cifar-10-binary.tar.gz")
    if not os.path.exists(data_dir):
        raise UsageError(
            f"CIFAR-10 data_dir {data_dir} does not exist; give the cifar-10-batches-bin folder or the .tar.gz"
        )
    if os.path.isfile(data_dir):
        return _load_tarball(data_dir, split)
    folder = data_dir
    nested = os.path.join(data_dir, "cifar-10-batches-bin")
    if not os.path.exists(os.path.join(folder, _BINARY_FILES[split][0])) and os.path.isdir(nested):
        folder = nested
    paths = [os.path.join(folder, f) for f in _BINARY_FILES[split]]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise UsageError(
            f"CIFAR-10 binary file {missing[0]} not found; --data_dir must hold {', '.join(_BINARY_FILES[split])}"
        )
    return _read_records(paths)


def _load_tarball(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    if not tarfile.is_tarfile(path):
        raise UsageError(f"{path} is neither a folder nor a tar archive of cifar-10-batches-bin")
    wanted = set(_BINARY_FILES[split])
    with tarfile.open(path) as tar, tempfile.TemporaryDirectory() as tmp:
        members = [m for m in tar.getmembers() if m.isfile() and os.path.basename(m.name) in wanted]
        found = {os.path.basename(m.name) for m in members}
        if found != wanted:
            raise UsageError(f"{path} lacks {', '.join(sorted(wanted - found))}; expected cifar-10-binary.tar.gz")
        paths = []
        for m in members:
            target = os.path.join(tmp, os.path.basename(m.name))
            with tar.extractfile(m) as f_in, open(target, "wb") as f_out:
                f_out.write(f_in.read())
            paths.append(target)
        paths.sort(key=lambda p: _BINARY_FILES[split].index(os.path.basename(p)))
        return _read_records(paths)


def _read_records(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Reads 3,073-byte records (label, then R, G, B planes) with ``tf.data.FixedLengthRecordDataset``."""
    for p in paths:
        size = os.path.getsize(p)
        if size == 0 or size % RECORD_BYTES:
            raise UsageError(
                f"{p} is truncated or not CIFAR-10 binary: {size} bytes is not a multiple of {RECORD_BYTES}-byte records"
            )
    ds = tf.data.FixedLengthRecordDataset(paths, RECORD_BYTES).batch(4096)
    chunks = [np.frombuffer(b, dtype=np.uint8).reshape(-1, RECORD_BYTES) for b in _raw_batches(ds)]
    records = np.concatenate(chunks)
    labels = records[:, 0].astype(np.int64)
    if labels.max(initial=0) >= NUM_CLASSES:
        raise UsageError(f"{paths[0]} holds label {labels.max()} >= 10: not CIFAR-10 binary records")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _raw_batches(ds: tf.data.Dataset):
    for batch in ds.as_numpy_iterator():
        yield b"".join(batch)


def _load_tfds(tfds_data_dir: str | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar10", data_dir=tfds_data_dir)
    if not tfds_prepared(builder):
        if not _reachable(*_TFDS_HOST):
            raise UsageError(
                f"TFDS cifar10 is not prepared in {builder.data_dir} and the download host is unreachable; "
                "use --dataset=binary --data_dir=<cifar-10-batches-bin or .tar.gz>, or --tfds_data_dir"
            )
        builder.download_and_prepare()
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
    return np.asarray(data[0], np.uint8), np.asarray(data[1], np.int64)


def tfds_prepared(builder) -> bool:
    """Whether a TFDS builder's data is on disk (prepared), so reading it needs no download."""
    try:
        return bool(tf.io.gfile.exists(builder.data_path) and builder.info.splits)
    except Exception:  # a half-written tfds folder counts as absent
        return False


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """A bounded connectivity probe: an offline tfds download otherwise hangs for minutes."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def class_names() -> list[str]:
    with open(os.path.join(sample_dir(), "batches.meta.txt"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]
