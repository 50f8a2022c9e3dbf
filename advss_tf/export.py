"""SavedModel export and restore (SPEC §10): explicit `tf.Module`s with input signatures, written atomically.

A pretraining export tracks the model parts by name (`trunk`, `stage4`, `head`, …) so `finetune` restores them from
`<export>/variables/variables` with `tf.train.Checkpoint(trunk=...)` and checks every variable matched; the
architecture and task travel as `assets/advss_export.json` (plus the jigsaw permutations), so an export alone is
enough to rebuild the Keras model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf

from advss_tf import faults
from advss_tf.errors import UsageError

EXPORT_INFO = "advss_export.json"
DEFAULT_IMAGE_SHAPE = (32, 32, 3)  # CIFAR's; a run on other data passes its own
IMAGE_SPEC = tf.TensorSpec([None, *DEFAULT_IMAGE_SHAPE], tf.float32, name="images")


def image_spec(image_shape=DEFAULT_IMAGE_SHAPE, dtype: tf.DType = tf.float32) -> tf.TensorSpec:
    """The `images` input of an exported signature: [None, H, W, C] of `dtype`."""
    return tf.TensorSpec([None, *(int(d) for d in image_shape)], dtype, name="images")


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """Yields a temporary sibling of `path`; on success it replaces `path`, on error it is removed.

    A crash never leaves a half-written directory at `path`, and an existing one is only replaced once the new one
    is complete.
    """
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
        faults.pause("export")  # test-only (advss_tf/faults.py): complete in `tmp`, not yet in place
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rmdir(old)
            os.rename(path, old)
        os.rename(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _float32_outputs(fn: Callable) -> Callable:
    """Floating outputs as float32 whatever the compute dtype (a `--mixed_precision` run computes in bf16/fp16)."""

    def wrapped(x):
        return {k: tf.cast(v, tf.float32) if v.dtype.is_floating else v for k, v in fn(x).items()}

    return wrapped


class ExportModule(tf.Module):
    """Tracks model parts by name and holds the exported functions."""

    def __init__(self, parts: dict[str, Any], functions: dict[str, Callable], input_spec: tf.TensorSpec = IMAGE_SPEC):
        super().__init__(name="advss_export")
        for name, obj in parts.items():
            setattr(self, name, obj)
        self._signature_names = []
        for name, fn in functions.items():
            setattr(self, name, tf.function(_float32_outputs(fn), input_signature=[input_spec], autograph=False))
            self._signature_names.append(name)

    def signatures(self) -> dict[str, Any]:
        return {name: getattr(self, name).get_concrete_function() for name in self._signature_names}


def save(
    path: str,
    parts: dict[str, Any],
    functions: dict[str, Callable],
    info: dict[str, Any],
    assets: dict[str, str] | None = None,
    extra_functions: dict[str, tuple[Callable, tf.TensorSpec]] | None = None,
    image_shape=DEFAULT_IMAGE_SHAPE,
) -> None:
    """Writes a SavedModel at `path` atomically.

    Args:
      parts: objects tracked by name (restorable with `restore_parts`).
      functions: signature name → fn(images float32 [N, H, W, 3] in [0,1]) → dict of tensors.
      info: JSON-able description written to assets/advss_export.json.
      assets: more asset files, name → text.
      extra_functions: signature name → (fn, input spec) for non-float inputs (e.g. uint8 images).
      image_shape: (H, W, C) of the images the signatures take (the data's).
    """
    module = ExportModule(parts, functions, image_spec(image_shape))
    signatures = module.signatures()
    for name, (fn, spec) in (extra_functions or {}).items():
        f = tf.function(_float32_outputs(fn), input_signature=[spec], autograph=False)
        setattr(module, name, f)
        signatures[name] = f.get_concrete_function()
    with atomic_directory(path) as tmp, tempfile.TemporaryDirectory() as staging:
        files = {EXPORT_INFO: json.dumps(info, indent=2, sort_keys=True), **(assets or {})}
        module.asset_files = []
        for name, text in files.items():
            p = os.path.join(staging, name)
            with open(p, "w", encoding="utf-8") as f:
                f.write(text)
            module.asset_files.append(tf.saved_model.Asset(p))
        tf.saved_model.save(module, tmp, signatures=signatures)


def read_info(path: str) -> dict[str, Any]:
    """The advss export description of a SavedModel, or a one-line UsageError if it is not an advss export."""
    if not tf.saved_model.contains_saved_model(path):
        raise UsageError(f"{path} is not a SavedModel directory (no saved_model.pb)")
    info_path = os.path.join(path, "assets", EXPORT_INFO)
    if not os.path.exists(info_path):
        raise UsageError(f"{path} is a SavedModel but not an advss_tf export (no assets/{EXPORT_INFO})")
    with open(info_path, encoding="utf-8") as f:
        return json.load(f)


def read_asset(path: str, name: str) -> str:
    with open(os.path.join(path, "assets", name), encoding="utf-8") as f:
        return f.read()


def restore_parts(path: str, **parts: Any) -> None:
    """Restores the named parts from an export's variables; every variable of every part must be matched.

    The reference code's `load_state_dict(strict=False)` loaded nothing without a word; here a partial or
    mismatched restore is an error.
    """
    reader = tf.train.Checkpoint(**parts)
    try:
        status = reader.read(os.path.join(path, "variables", "variables"))
        status.expect_partial().assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot restore {', '.join(parts)} from {path}: {first[:200]}") from e
