"""The official CIFAR binary format, shared by CIFAR-10 and CIFAR-100: fixed-length records of label bytes and then
the R, G, B planes of a 32x32 image, in a folder or a .tar.gz. The python-format batches are never read:
unpickling runs code."""

from __future__ import annotations

import dataclasses
import os
import tarfile
import tempfile

import numpy as np
import tensorflow as tf

from advss_tf.errors import UsageError

IMAGE_BYTES = 32 * 32 * 3


@dataclasses.dataclass(frozen=True)
class BinaryFormat:
    """One dataset's binary layout.

    Attributes:
      name: for messages (CIFAR-10, CIFAR-100).
      folder: the folder the official archive unpacks to (cifar-10-batches-bin).
      archive: the official archive's name, for messages.
      files: split → its record files, in order.
      label_bytes: label bytes before each image (1 for CIFAR-10; 2 for CIFAR-100: coarse, fine).
    """

    name: str
    folder: str
    archive: str
    files: dict[str, tuple[str, ...]]
    label_bytes: int

    @property
    def record_bytes(self) -> int:
        return self.label_bytes + IMAGE_BYTES


def load_binary(
    fmt: BinaryFormat, data_dir: str | None, split: str, label_index: int, num_classes: int, flag: str
) -> tuple[np.ndarray, np.ndarray]:
    """Reads a split from a folder (or the folder inside `data_dir`) or from the official .tar.gz.

    Args:
      label_index: which label byte of each record (CIFAR-100: 0 coarse, 1 fine).
      num_classes: labels must be below this.
      flag: how the user selects this source, for messages (``--dataset=binary``).

    Returns:
      ``(images uint8 [N, 32, 32, 3], labels int64 [N])``.
    """
    if not data_dir:
        raise UsageError(f"{flag} needs --data_dir: a {fmt.folder} folder or {fmt.archive}")
    if not os.path.exists(data_dir):
        raise UsageError(f"{fmt.name} data_dir {data_dir} does not exist; give the {fmt.folder} folder or the .tar.gz")
    if os.path.isfile(data_dir):
        return _load_tarball(fmt, data_dir, split, label_index, num_classes)
    folder = data_dir
    nested = os.path.join(data_dir, fmt.folder)
    if not os.path.exists(os.path.join(folder, fmt.files[split][0])) and os.path.isdir(nested):
        folder = nested
    paths = [os.path.join(folder, f) for f in fmt.files[split]]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise UsageError(
            f"{fmt.name} binary file {missing[0]} not found; --data_dir must hold {', '.join(fmt.files[split])}"
        )
    return read_records(fmt, paths, label_index, num_classes)


def _load_tarball(fmt: BinaryFormat, path: str, split: str, label_index: int, num_classes: int):
    if not tarfile.is_tarfile(path):
        raise UsageError(f"{path} is neither a folder nor a tar archive of {fmt.folder}")
    wanted = set(fmt.files[split])
    with tarfile.open(path) as tar, tempfile.TemporaryDirectory() as tmp:
        members = [m for m in tar.getmembers() if m.isfile() and os.path.basename(m.name) in wanted]
        found = {os.path.basename(m.name) for m in members}
        if found != wanted:
            raise UsageError(f"{path} lacks {', '.join(sorted(wanted - found))}; expected {fmt.archive}")
        paths = []
        for m in members:
            target = os.path.join(tmp, os.path.basename(m.name))
            with tar.extractfile(m) as f_in, open(target, "wb") as f_out:
                f_out.write(f_in.read())
            paths.append(target)
        paths.sort(key=lambda p: fmt.files[split].index(os.path.basename(p)))
        return read_records(fmt, paths, label_index, num_classes)


def read_records(
    fmt: BinaryFormat, paths: list[str], label_index: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reads the records of `paths` with ``tf.data.FixedLengthRecordDataset``."""
    size_of = fmt.record_bytes
    for p in paths:
        size = os.path.getsize(p)
        if size == 0 or size % size_of:
            raise UsageError(
                f"{p} is truncated or not {fmt.name} binary: {size} bytes is not a multiple of {size_of}-byte records"
            )
    ds = tf.data.FixedLengthRecordDataset(paths, size_of).batch(4096)
    chunks = [np.frombuffer(b"".join(batch), dtype=np.uint8).reshape(-1, size_of) for batch in ds.as_numpy_iterator()]
    records = np.concatenate(chunks)
    labels = records[:, label_index].astype(np.int64)
    if labels.max(initial=0) >= num_classes:
        raise UsageError(f"{paths[0]} holds label {labels.max()} >= {num_classes}: not {fmt.name} binary records")
    images = records[:, fmt.label_bytes :].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels
