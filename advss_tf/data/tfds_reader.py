"""Reading a TFDS image-classification dataset into memory without ever hanging offline.

A prepared dataset is read from disk; an unprepared one is downloaded only when its download host answers a
bounded probe (an offline `download_and_prepare` otherwise hangs for minutes); otherwise one line says what to do.
"""

from __future__ import annotations

import socket

import numpy as np
import tensorflow as tf

from advss_tf.errors import UsageError

READ_BATCH = 4096


def builder(name: str, tfds_data_dir: str | None):
    """The TFDS builder of `name`; UsageError when this TFDS does not know the name."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=tfds_data_dir)
    except Exception as e:  # DatasetNotFoundError and friends: their messages span many lines
        raise UsageError(f"TFDS does not know a dataset {name!r} ({type(e).__name__})") from None


def read(
    name: str,
    split: str,
    tfds_data_dir: str | None,
    *,
    host: tuple[str, int],
    label_key: str | None = "label",
    advice: str = "",
) -> tuple[np.ndarray, np.ndarray, object]:
    """(images uint8 [N, H, W, 3], labels int64 [N] (None when `label_key` is None), the builder's info)."""
    import tensorflow_datasets as tfds

    b = builder(name, tfds_data_dir)
    if not tfds_prepared(b):
        if not _reachable(*host):
            raise UsageError(
                f"TFDS {name} is not prepared in {b.data_dir} and the download host {host[0]} is unreachable; "
                f"prepare it elsewhere and pass --tfds_data_dir{advice}"
            )
        b.download_and_prepare()
    ds = b.as_dataset(split=split).batch(READ_BATCH)
    images, labels = [], []
    for batch in tfds.as_numpy(ds):
        images.append(np.asarray(batch["image"], np.uint8))
        if label_key is not None:
            labels.append(np.asarray(batch[label_key], np.int64))
    shape = tuple(b.info.features["image"].shape)
    x = np.concatenate(images) if images else np.zeros([0, *shape], np.uint8)
    y = (np.concatenate(labels) if labels else np.zeros([0], np.int64)) if label_key is not None else None
    return x, y, b.info


def class_names(info, key: str = "label") -> tuple[str, ...]:
    return tuple(info.features[key].names)


def tfds_prepared(b) -> bool:
    """Whether a TFDS builder's data is on disk (prepared), so reading it needs no download."""
    try:
        return bool(tf.io.gfile.exists(b.data_path) and b.info.splits)
    except Exception:  # a half-written tfds folder counts as absent
        return False


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """A bounded connectivity probe: an offline tfds download otherwise hangs for minutes."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
