"""Writes CIFAR-10-C in the official layout from any 32x32 split, with the built-in generator (SPEC §7).

    python tools/write_cifar10c.py --output_dir=data/CIFAR-10-C                     # bundled sample, test split
    python tools/write_cifar10c.py --dataset=binary --data_dir=cifar-10-batches-bin \\
        --split=train --corruptions=fog,snow --output_dir=data/CIFAR-10-C-train
    python tools/write_cifar10c.py --dataset=cifar100 --data_dir=cifar-100-binary --output_dir=data/CIFAR-100-C

For each corruption, ``<name>.npy`` holds uint8 [5 * N, 32, 32, 3]: the N images at severity 1, then 2, ... 5;
``labels.npy`` holds the N labels repeated 5 times (uint8, as published). ``load_cifar10c("npy", ...)`` reads it
back. Each file is written under a temporary name and renamed into place, so a crash never leaves a half file.
Exit status 2 with one line on bad input (unknown corruption, missing data, a non-empty --output_dir).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import numpy as np
from absl import flags

from advss_tf.corruptions.cifar10c import ALL_CORRUPTIONS, SEVERITIES, check_corruption, corrupt
from advss_tf.errors import UsageError

FLAGS = flags.FLAGS
# Images per call to the generator: the progress bar moves this often.
_CHUNK = 500


def write_cifar10c(
    images: np.ndarray,
    labels: np.ndarray,
    output_dir: str,
    corruptions: Sequence[str] = ALL_CORRUPTIONS,
    *,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> list[str]:
    """Corrupts ``images`` at every severity and writes ``<name>.npy`` per corruption and ``labels.npy``.

    Args:
      images: uint8 ``[N, 32, 32, 3]``.
      labels: ``[N]`` class indices.
      output_dir: created if needed; must be empty unless ``overwrite``.
      corruptions: names from ``ALL_CORRUPTIONS``.
      seed: the generator's seed.
      overwrite: write into a non-empty folder (replacing files of the same names).
      progress: show a keras progress bar.

    Returns:
      The paths written, labels.npy last.

    Raises:
      UsageError: unknown corruption, mismatched arrays or a non-empty output folder.
    """
    for name in corruptions:
        check_corruption(name, SEVERITIES[0])
    if not corruptions:
        raise UsageError(f"no corruptions to write; valid: {', '.join(ALL_CORRUPTIONS)}")
    if len(images) != len(labels) or not len(images):
        raise UsageError(
            f"need as many labels as images (at least one), got {len(images)} images, {len(labels)} labels"
        )
    _check_output_dir(output_dir, overwrite)
    os.makedirs(output_dir, exist_ok=True)
    bar = None
    if progress:
        import keras

        bar = keras.utils.Progbar(len(corruptions) * len(SEVERITIES) * len(images), unit_name="image")
    written = []
    for name in corruptions:
        path = os.path.join(output_dir, f"{name}.npy")
        _write_atomically(path, functools.partial(_write_corruption, images=images, name=name, seed=seed, bar=bar))
        written.append(path)
    labels_path = os.path.join(output_dir, "labels.npy")
    tiled = np.tile(np.asarray(labels).astype(np.uint8), len(SEVERITIES))
    _write_atomically(labels_path, functools.partial(np.save, arr=tiled))
    written.append(labels_path)
    return written


def _write_corruption(path: str, *, images: np.ndarray, name: str, seed: int, bar) -> None:
    """Fills a uint8 [5 * N, 32, 32, 3] .npy at ``path`` severity after severity, a chunk at a time."""
    n = len(images)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(SEVERITIES) * n, 32, 32, 3))
    for severity in SEVERITIES:
        for start in range(0, n, _CHUNK):
            chunk = images[start : start + _CHUNK]
            row = (severity - 1) * n + start
            out[row : row + len(chunk)] = corrupt(chunk, name, severity, seed)
            if bar is not None:
                bar.add(len(chunk))
    out.flush()
    del out  # closes the memory map before the rename


def _check_output_dir(output_dir: str, overwrite: bool) -> None:
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"--output_dir {output_dir} exists and is not a folder")
    existing = sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
    if existing and not overwrite:
        raise UsageError(
            f"--output_dir {output_dir} is not empty ({len(existing)} entries, e.g. {existing[0]}); "
            "pass --overwrite to write into it"
        )


def _write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp)`` on a temporary path in the same folder, then renames it to ``path``."""
    folder, base = os.path.split(path)
    # Ends in .npy so that np.save does not append another suffix.
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.tmp.npy")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def define_flags() -> None:
    from advss_tf import common_flags

    common_flags.define_data_flags(train_split=False)
    flags.DEFINE_enum("split", "test", ("train", "test"), "The split to corrupt (train: CIFAR's official 50,000).")
    flags.DEFINE_list("corruptions", list(ALL_CORRUPTIONS), "Comma-separated corruptions (default: all 19).")
    flags.DEFINE_integer("seed", 0, "Seed of the generator (a non-negative integer).")
    flags.DEFINE_integer("max_examples", None, "Corrupt only the first this many images of the split (default: all).")
    flags.DEFINE_string("output_dir", None, "Folder for <corruption>.npy and labels.npy (must be empty).")
    flags.DEFINE_bool("overwrite", False, "Write into a non-empty --output_dir, replacing files of the same names.")
    flags.mark_flag_as_required("output_dir")
    flags.register_validator("corruptions", _valid_corruptions)
    flags.register_validator("seed", lambda v: v >= 0, "--seed must be >= 0")
    flags.register_validator("max_examples", lambda v: v is None or v >= 1, "--max_examples must be >= 1")


def _valid_corruptions(names: list[str]) -> bool:
    unknown = [n for n in names if n not in ALL_CORRUPTIONS]
    if unknown or not names:
        raise flags.ValidationError(
            f"unknown corruption {', '.join(unknown) or '(none given)'}; valid: {', '.join(ALL_CORRUPTIONS)}"
        )
    return True


def main() -> None:
    from advss_tf import common_flags
    from advss_tf.data import datasets

    _check_output_dir(FLAGS.output_dir, FLAGS.overwrite)  # before a long load
    src = common_flags.data_source()
    split = datasets.load(src, FLAGS.split)
    datasets.require_labelled(split, src, "a corrupted test set")
    images, labels = split.images, split.labels
    images, labels = images[: FLAGS.max_examples], labels[: FLAGS.max_examples]
    paths = write_cifar10c(
        images, labels, FLAGS.output_dir, FLAGS.corruptions, seed=FLAGS.seed, overwrite=FLAGS.overwrite
    )
    print(
        f"wrote {len(paths) - 1} corruptions x {len(SEVERITIES)} severities of {len(images)} images to {FLAGS.output_dir}"
    )


if __name__ == "__main__":
    from advss_tf import common_flags

    define_flags()
    common_flags.run_binary(main)
