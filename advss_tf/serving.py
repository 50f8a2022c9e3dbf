"""Classifier SavedModels (SPEC §10): the serving signatures, the atomic write, and opening one to attack through.

Every classifier export — a fine-tuned model or an ensemble of them — has the same interface, which the evaluate
binary relies on: `serving_default` maps float32 images [N, H, W, 3] in [0, 1] (input key `images`; H x W the
training data's, 32x32 on CIFAR) to
`{"logits": [N, K], "probabilities": [N, K]}`, and `serving_uint8` does the same for uint8 images in [0, 255].
Both are differentiable with respect to the images after `tf.saved_model.load`, so attacks run through them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from advss_tf import export
from advss_tf.errors import UsageError

CLASSIFIER_FORMAT = "advss_tf.classifier"


def classifier_outputs(logits: tf.Tensor) -> dict[str, tf.Tensor]:
    """{'logits', 'probabilities'} in float32 from logits."""
    logits = tf.cast(logits, tf.float32)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits)}


def save_classifier(
    path: str,
    logits_fn: Callable[[tf.Tensor], tf.Tensor],
    parts: dict[str, Any],
    info: dict[str, Any],
    image_shape=export.DEFAULT_IMAGE_SHAPE,
) -> None:
    """Writes a classifier SavedModel with `serving_default` and `serving_uint8`, atomically.

    Args:
      path: the export directory (replaced only once the new export is complete).
      logits_fn: float32 images [N, 32, 32, 3] in [0, 1] → logits [N, K], in inference mode.
      parts: objects whose variables the export holds, tracked by name.
      info: JSON-able description; `format` is set to "advss_tf.classifier".
      image_shape: (H, W, C) of the images both signatures take.
    """

    def serve(images):
        return classifier_outputs(logits_fn(images))

    def serve_uint8(images):
        return serve(tf.cast(images, tf.float32) / 255.0)

    export.save(
        path,
        parts,
        {"serving_default": serve},
        info={**info, "format": CLASSIFIER_FORMAT},
        extra_functions={"serving_uint8": (serve_uint8, export.image_spec(image_shape, tf.uint8))},
        image_shape=image_shape,
    )


def logits_function(path: str) -> tuple[Any, Callable[[tf.Tensor], tf.Tensor]]:
    """Loads any SavedModel whose `serving_default` maps one float32 [N, H, W, 3] input to `logits`.

    Returns:
      (the loaded object — keep it alive while the function is used, images → logits function).

    Raises:
      UsageError: not a SavedModel, or its `serving_default` is not images → logits.
    """
    if not tf.saved_model.contains_saved_model(path):
        raise UsageError(f"{path} is not a SavedModel directory (no saved_model.pb)")
    loaded = tf.saved_model.load(path)
    signature = getattr(loaded, "signatures", {}).get("serving_default")
    if signature is None:
        raise UsageError(f"{path} has no serving_default signature")
    _, inputs = signature.structured_input_signature
    if len(inputs) != 1:
        raise UsageError(f"{path}: serving_default takes {len(inputs)} inputs; an images → logits signature takes one")
    ((name, spec),) = inputs.items()
    if spec.dtype != tf.float32 or not spec.shape.is_compatible_with([None, None, None, 3]):
        raise UsageError(
            f"{path}: serving_default input {name!r} is {spec.dtype.name} {spec.shape}, not float32 [N,H,W,3]"
        )
    if "logits" not in signature.structured_outputs:
        raise UsageError(f"{path}: serving_default has no 'logits' output ({', '.join(signature.structured_outputs)})")

    def logits(images: tf.Tensor) -> tf.Tensor:
        return signature(**{name: images})["logits"]

    return loaded, logits


def log_mean_softmax(member_logits: list[tf.Tensor]) -> tf.Tensor:
    """log(mean_m softmax(logits_m)), computed stably in log space.

    Used as the ensemble's logits: softmax of it is the averaged probability vector itself, and cross-entropy on
    it is -log of the averaged probability of the label, so an attack on these logits attacks the average.
    """
    stacked = tf.stack([tf.nn.log_softmax(tf.cast(z, tf.float32)) for z in member_logits])  # [M, N, K]
    return tf.reduce_logsumexp(stacked, axis=0) - tf.math.log(float(len(member_logits)))


class _Ensemble(tf.Module):
    """Holds the loaded member SavedModels (so their variables are saved again) and averages them."""

    def __init__(self, paths: list[str]):
        super().__init__(name="ensemble")
        self.members = []
        self._logits_fns = []
        self.image_shapes = []
        for path in paths:
            loaded, fn = logits_function(path)
            _, inputs = loaded.signatures["serving_default"].structured_input_signature
            self.image_shapes.append(tuple(next(iter(inputs.values())).shape[1:]))
            # A member's own asset files (its advss_export.json) would be saved again next to the ensemble's and
            # take that name first; the ensemble's info records what it needs of each member.
            if hasattr(loaded, "asset_files"):
                del loaded.asset_files
            self.members.append(loaded)
            self._logits_fns.append(fn)

    def logits(self, images: tf.Tensor) -> tf.Tensor:
        return log_mean_softmax([fn(images) for fn in self._logits_fns])


def save_ensemble(member_paths: list[str], output: str) -> dict[str, Any]:
    """Writes one classifier SavedModel whose probabilities are the mean of the members' softmax outputs.

    Its `logits` are log(mean softmax), so an attack on the export's logits (cross-entropy, margin) attacks the
    averaged prediction, not any single member.

    Args:
      member_paths: classifier SavedModels (ours or any with serving_default: float32 images → logits), ≥ 2.
      output: the ensemble export directory (written atomically).

    Returns:
      The info written to the export's assets.
    """
    if len(member_paths) < 2:
        raise UsageError(f"an ensemble needs at least 2 members, got {len(member_paths)}")
    if os.path.abspath(output) in {os.path.abspath(p) for p in member_paths}:
        raise UsageError(f"--output {output} is also a member; write the ensemble elsewhere")
    ensemble = _Ensemble(member_paths)
    shapes = set(ensemble.image_shapes)
    if len(shapes) != 1 or None in next(iter(shapes)):
        listed = ", ".join(str(list(s)) for s in sorted(shapes, key=str))
        raise UsageError(f"the members must take images of one fixed size; they take {listed}")
    image_shape = shapes.pop()
    probe = tf.zeros([2, *image_shape], tf.float32)
    classes = {int(fn(probe).shape[-1]) for fn in ensemble._logits_fns}
    if len(classes) != 1:
        raise UsageError(f"the members disagree on the number of classes: {sorted(classes)}")
    members = []
    for path in member_paths:
        try:
            member_info = export.read_info(path)
        except UsageError:
            member_info = {}  # a third-party classifier: fine, it has images → logits
        members.append(
            {
                "path": os.path.abspath(path),
                "format": member_info.get("format"),
                "pretrained": member_info.get("pretrained"),
                "validation": member_info.get("validation"),
            }
        )
    info = {
        "version": 1,
        "ensemble": members,
        "combination": "probabilities = mean of the members' softmax; logits = log(probabilities)",
        "num_classes": classes.pop(),
        "image_shape": list(image_shape),
        "backbone": None,
    }
    save_classifier(output, ensemble.logits, {"members": ensemble.members}, info, image_shape=image_shape)
    return {**info, "format": CLASSIFIER_FORMAT}
