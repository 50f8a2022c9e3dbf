"""Your own images: a folder of PNG/JPEG/BMP files, decoded (and resized with ``--image_size``) in tf.data.

Layout: ``root/<class>/**/*.png|jpg`` is labelled (classes in sorted folder-name order); images anywhere else (any
image directly in the folder) make it unlabelled, which pretraining accepts. When ``root`` holds ``train/`` or
``test/`` folders, each split reads its own (the classes are the training split's, so the test labels mean the
same classes); otherwise every split reads ``root`` itself.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from advss_tf.data.datasets import UNLABELLED, DatasetInfo, DataSource, Split, resize_tensor
from advss_tf.errors import UsageError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
SPLIT_FOLDERS = ("train", "test")
_DECODE_BATCH = 256


def load(src: DataSource, split: str) -> Split:
    """The images of `split` (``train`` or ``test``) under `src.data_dir`, labelled by class folder when it has them."""
    root = src.data_dir
    if not root or not os.path.isdir(root):
        raise UsageError(f"--data_dir {root} is not a folder; --dataset=folder needs a folder of images")
    folder = split_folder(root, split)
    classes = _classes(split_folder(root, "train") if _has_split_folders(root) else folder)
    if classes is not None and not _direct_images(folder):
        files, labels = [], []
        for index, name in enumerate(classes):
            found = _images_under(os.path.join(folder, name))
            files += found
            labels += [index] * len(found)
        extra = sorted(set(_subfolders_with_images(folder)) - set(classes))
        if extra:
            raise UsageError(f"{folder} has class folders the training split lacks: {', '.join(extra[:5])}")
        info_classes = (len(classes), tuple(classes))
    else:
        files, info_classes = _images_under(folder), (None, ())
        labels = [UNLABELLED] * len(files)
    if not files:
        raise UsageError(f"{folder} holds no images ({', '.join(EXTENSIONS)})")
    images = decode(files, src.image_size, folder)
    name = f"folder:{os.path.basename(os.path.normpath(root))}"
    info = DatasetInfo(name, info_classes[0], tuple(images.shape[1:]), info_classes[1])
    return Split(images, np.asarray(labels, np.int64), info, split)


def split_folder(root: str, split: str) -> str:
    """root/<split> when root is split into train/ and test/, else root."""
    if not _has_split_folders(root):
        return root
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise UsageError(f"{root} has {', '.join(_present_splits(root))}/ but no {split}/ folder")
    return folder


def decode(files: list[str], image_size: int, where: str) -> np.ndarray:
    """uint8 [N, H, W, 3] of the files, resized to image_size x image_size when it is > 0.

    Raises:
      UsageError: an undecodable file, or images of different sizes without `image_size`.
    """

    def read(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return resize_tensor(image, image_size) if image_size else image

    ds = tf.data.Dataset.from_tensor_slices(files).map(read, num_parallel_calls=tf.data.AUTOTUNE)
    images = []
    try:
        for image in ds.as_numpy_iterator():
            if images and image.shape != images[0].shape:
                raise UsageError(
                    f"{where} holds images of different sizes ({_size(images[0])} and {_size(image)}); "
                    "pass --image_size to resize them all"
                )
            images.append(image)
    except tf.errors.OpError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"an image under {where} cannot be decoded: {first[:160]}") from None
    return np.stack(images)


def _size(image: np.ndarray) -> str:
    return f"{image.shape[0]}x{image.shape[1]}"


def _has_split_folders(root: str) -> bool:
    return bool(_present_splits(root))


def _present_splits(root: str) -> list[str]:
    return [s for s in SPLIT_FOLDERS if os.path.isdir(os.path.join(root, s))]


def _is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS) and not name.startswith(".")


def _direct_images(folder: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if _is_image(n))


def _images_under(folder: str) -> list[str]:
    found = []
    for current, dirs, names in os.walk(folder):
        dirs.sort()
        found += [os.path.join(current, n) for n in sorted(names) if _is_image(n)]
    return found


def _subfolders_with_images(folder: str) -> list[str]:
    return sorted(
        n
        for n in os.listdir(folder)
        if os.path.isdir(os.path.join(folder, n)) and not n.startswith(".") and _images_under(os.path.join(folder, n))
    )


def _classes(folder: str) -> list[str] | None:
    """The class folders (sorted) when `folder` is laid out as <class>/ folders with no loose images, else None."""
    if _direct_images(folder):
        return None
    return _subfolders_with_images(folder) or None
