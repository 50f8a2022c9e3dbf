"""Opening a classifier SavedModel to attack through: ours or a third party's (SPEC §9, §13).

Any SavedModel with a signature that maps one float image input [N, H, W, 3] in [0, 1] to [N, K] class scores works,
H x W the test images' size and K their dataset's class count (32x32 and 10 on CIFAR-10): our exports (`serving_default` → {"logits", "probabilities"}), a Keras `model.export` (`serving_default` /
`serve` → one output) or a `tf.saved_model.save` with signatures. A model whose only output is probabilities is
attacked through log-probabilities (same argmax, same cross-entropy). Every problem is a one-line UsageError.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import numpy as np
import tensorflow as tf

from advss_tf.errors import UsageError

DEFAULT_NUM_CLASSES = 10  # CIFAR-10's, when a caller names no dataset
_PROBABILITY_WORDS = ("prob", "softmax")
_LOG_FLOOR = 1e-30  # log(0) would give -inf logits and NaN gradients


@dataclasses.dataclass
class Classifier:
    """A loaded classifier: call it on float32 images [N, H, W, 3] in [0, 1] to get logits [N, K].

    Attributes:
      path: the SavedModel directory.
      signature: the signature used.
      input_name, output_name: its input and output keys.
      output_kind: "logits", or "probabilities" (then the call returns log-probabilities).
      batch_size: the signature's fixed batch size, or None when any batch size works.
    """

    path: str
    signature: str
    input_name: str
    output_name: str
    output_kind: str
    batch_size: int | None
    function: Any = dataclasses.field(repr=False)
    loaded: Any = dataclasses.field(repr=False)  # keeps the restored variables alive

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        return as_logits(self.function(**{self.input_name: images})[self.output_name], images, self.output_kind)

    def describe(self) -> dict[str, Any]:
        """The model's identity for results.json: path, signature, keys, and a hash of its files (when it was
        loaded from a path)."""
        return {
            "path": os.path.abspath(self.path) if self.path else None,
            "signature": self.signature,
            "input": self.input_name,
            "output": self.output_name,
            "output_kind": self.output_kind,
            **(model_hashes(self.path) if self.path else {}),
        }


def as_logits(scores: tf.Tensor, images: tf.Tensor, output_kind: str) -> tf.Tensor:
    """A model's float32 scores [N, K] as the logits the attacks take: log-probabilities for "probabilities"."""
    scores = tf.cast(scores, tf.float32)
    if output_kind == "probabilities":
        scores = tf.math.log(tf.maximum(scores, _LOG_FLOOR))
    # 0·Σx ties the output to the input, so a model with no gradient path (stop_gradient, a non-differentiable
    # quantiser) gives zero input gradients, which the masking check reports, instead of None, which crashes.
    return scores + 0.0 * tf.reduce_sum(images, axis=tf.range(1, tf.rank(images)))[:, None]


def model_hashes(path: str) -> dict[str, str]:
    """SHA-256 of saved_model.pb and of the variables (every file under variables/, names and contents, sorted)."""
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        graph = hashlib.sha256(f.read()).hexdigest()
    variables = hashlib.sha256()
    var_dir = os.path.join(path, "variables")
    for root, _, files in sorted(os.walk(var_dir)):
        for name in sorted(files):
            file_path = os.path.join(root, name)
            variables.update(os.path.relpath(file_path, var_dir).encode())
            with open(file_path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    variables.update(chunk)
    return {"saved_model_pb_sha256": graph, "variables_sha256": variables.hexdigest()}


def default_model_name(path: str) -> str:
    """A short label for plots: the run directory's name for <run>/export/<x>, else the folder name."""
    parts = os.path.abspath(path).rstrip(os.sep).split(os.sep)
    if len(parts) >= 3 and parts[-2] == "export":
        return parts[-3]
    return parts[-1] or "model"


def _image_input(signature, image_shape) -> tuple[str, tf.TensorSpec] | None:
    args, kwargs = signature.structured_input_signature
    specs = {**kwargs, **{str(i): s for i, s in enumerate(args)}}
    if len(specs) != 1:
        return None
    ((name, spec),) = specs.items()
    if not isinstance(spec, tf.TensorSpec) or not spec.dtype.is_floating:
        return None
    if not spec.shape.is_compatible_with([None, *image_shape]):
        return None
    return name, spec


def _score_output(signature, num_classes: int | None) -> tuple[str, str] | None:
    """(output key, "logits" | "probabilities" | "unknown") of the [N, num_classes] output (any K: None), or None."""
    outputs = signature.structured_outputs
    if not isinstance(outputs, dict):
        return None
    candidates = [
        k
        for k, s in outputs.items()
        if isinstance(s, tf.TensorSpec) and s.shape.is_compatible_with([None, num_classes])
    ]
    if "logits" in candidates:
        return "logits", "logits"
    named_probs = [k for k in candidates if any(w in k.lower() for w in _PROBABILITY_WORDS)]
    others = [k for k in candidates if k not in named_probs]
    if len(others) == 1:
        return others[0], "unknown"
    if not others and named_probs:
        return named_probs[0], "probabilities"
    return None


def _describe_signatures(signatures) -> str:
    parts = []
    for name, sig in signatures.items():
        args, kwargs = sig.structured_input_signature
        ins = ", ".join(f"{k}:{s.dtype.name}{s.shape}" for k, s in kwargs.items() if isinstance(s, tf.TensorSpec))
        outs = sig.structured_outputs
        outs = ", ".join(f"{k}:{s.shape}" for k, s in outs.items()) if isinstance(outs, dict) else str(outs)
        parts.append(f"{name}({ins}) -> ({outs})")
    return "; ".join(parts) or "none"


def looks_like_probabilities(scores: np.ndarray) -> bool:
    """Every row in [0, 1] and summing to 1: probabilities, not logits (AutoAttack's `check_range_output`)."""
    return bool(np.all(scores >= 0.0) and np.all(scores <= 1.0) and np.allclose(scores.sum(-1), 1.0, atol=1e-3))


def load_classifier(path: str, probe_images: np.ndarray, num_classes: int | None = DEFAULT_NUM_CLASSES) -> Classifier:
    """Loads a classifier SavedModel and checks it on a probe batch.

    Args:
      path: the SavedModel directory.
      probe_images: a few float32 test images [n, H, W, 3] in [0, 1] (n ≥ 2) to check the output shape with.
      num_classes: the test data's class count: the model must output that many scores (None: any K ≥ 2, for
        callers that learn the class count from the model, as the Python API does).

    Returns:
      The classifier. A signature named "serving_default" is preferred; then the others in name order.

    Raises:
      UsageError: not a SavedModel, unreadable, or no signature that maps [N, H, W, 3] images to [N, K] scores.
    """
    if not os.path.exists(path):
        raise UsageError(f"--model {path} does not exist")
    if not tf.saved_model.contains_saved_model(path):
        raise UsageError(f"--model {path} is not a SavedModel directory (no saved_model.pb)")
    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:  # a corrupt or incompatible SavedModel raises many different types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"cannot load SavedModel {path}: {first[:200]}") from e
    return classifier_from_saved_model(loaded, probe_images, path, num_classes)


def classifier_from_saved_model(
    loaded: Any, probe_images: np.ndarray, path: str | None = None, num_classes: int | None = DEFAULT_NUM_CLASSES
) -> Classifier:
    """The classifier behind a SavedModel already loaded with `tf.saved_model.load` (`load_classifier`'s choice
    of signature and checks); the Classifier holds `loaded`, so its variables live as long as it does.

    Raises:
      UsageError: no signature that maps [N, H, W, 3] images (the probe's H, W) to [N, num_classes] scores, or one
        that fails on the probe.
    """
    where = path or "the loaded SavedModel"
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    order = sorted(signatures, key=lambda n: (n != "serving_default", n))
    image_shape = tuple(probe_images.shape[1:])
    for name in order:
        sig = signatures[name]
        image_input, output = _image_input(sig, image_shape), _score_output(sig, num_classes)
        if image_input is None or output is None:
            continue
        input_name, spec = image_input
        output_name, kind = output
        batch = spec.shape[0]
        probe = _probe_batch(probe_images, batch)
        try:
            scores = sig(**{input_name: tf.constant(probe, dtype=spec.dtype)})[output_name].numpy()
        except Exception as e:  # wrong shapes inside the graph, missing kernels, ...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UsageError(f"{where}: signature {name!r} failed on a probe batch: {first[:200]}") from e
        if (
            num_classes is not None
            and scores.ndim == 2
            and len(scores) == len(probe)
            and scores.shape[1] != num_classes
        ):
            raise UsageError(
                f"{where} outputs {scores.shape[1]} classes but the test data has {num_classes}; evaluate it on its "
                "own dataset (--dataset, --label)"
            )
        if (
            scores.ndim != 2
            or len(scores) != len(probe)
            or (num_classes is not None and scores.shape[1] != num_classes)
        ):
            raise UsageError(
                f"{where}: signature {name!r} output {output_name!r} has shape {list(scores.shape)} for "
                f"{len(probe)} images, not [N, {num_classes or 'K'}] logits"
            )
        if not np.all(np.isfinite(scores)):
            raise UsageError(f"{where}: signature {name!r} gives non-finite outputs on clean test images")
        if kind == "unknown":
            kind = "probabilities" if looks_like_probabilities(scores) else "logits"
        return Classifier(path or "", name, input_name, output_name, kind, batch, sig, loaded)
    shape = "x".join(str(d) for d in image_shape[:2])
    for name in order:  # a classifier of another class count: say so rather than list signatures
        sig = signatures[name]
        output = _score_output(sig, None)
        if _image_input(sig, image_shape) is not None and output is not None:
            classes = sig.structured_outputs[output[0]].shape[-1]
            if num_classes is not None and classes is not None and classes != num_classes:
                raise UsageError(
                    f"{where} outputs {classes} classes but the test data has {num_classes}; evaluate it on its own "
                    "dataset (--dataset, --label)"
                )
    raise UsageError(
        f"{where} has no signature mapping float32 [N,{shape},3] images in [0,1] to [N,{num_classes or 'K'}] logits "
        f"(signatures: {_describe_signatures(signatures)})"
    )


def _probe_batch(images: np.ndarray, batch: int | None) -> np.ndarray:
    if batch is None:
        return images
    reps = -(-batch // len(images))
    return np.concatenate([images] * reps)[:batch]
