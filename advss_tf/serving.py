"""Classifier SavedModels (SPEC §10): the serving signatures, the atomic write, and opening one to attack through.

Every classifier export — a fine-tuned model or an ensemble of them — has the same interface, which the evaluate
binary relies on: `serving_default` maps float32 images [N, H, W, 3] in [0, 1] (input key `images`; H x W the
training data's, 32x32 on CIFAR) to
`{"logits": [N, K], "probabilities": [N, K]}`, and `serving_uint8` does the same for uint8 images in [0, 255].
Both are differentiable with respect to the images after `tf.saved_model.load`, so attacks run through them.

Opening one (`load_classifier`, `classifier_from_saved_model`) is the one way every caller opens a classifier
SavedModel — the evaluation (binary and Python API), the ensemble writer, the tests: any SavedModel with a signature
that maps one float image input [N, H, W, 3] in [0, 1] to [N, K] class scores works — our exports, a Keras
`model.export` (`serving_default` / `serve` → one output) or a `tf.saved_model.save` with signatures. A model whose
only output is probabilities is attacked through log-probabilities (same argmax, same cross-entropy). Every problem
is a one-line UsageError.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from advss_tf import export
from advss_tf.errors import UsageError

CLASSIFIER_FORMAT = "advss_tf.classifier"
DEFAULT_NUM_CLASSES = 10  # CIFAR-10's, when a caller names no dataset
_PROBABILITY_WORDS = ("prob", "softmax")
_LOG_FLOOR = 1e-30  # log(0) would give -inf logits and NaN gradients


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


@dataclasses.dataclass
class Classifier:
    """A loaded classifier: call it on float32 images [N, H, W, 3] in [0, 1] to get logits [N, K].

    Attributes:
      path: the SavedModel directory.
      signature: the signature used.
      input_name, output_name: its input and output keys.
      output_kind: "logits", or "probabilities" (then the call returns log-probabilities).
      batch_size: the signature's fixed batch size, or None when any batch size works.
      num_classes: K, read from the probe's output (None: not probed).
    """

    path: str
    signature: str
    input_name: str
    output_name: str
    output_kind: str
    batch_size: int | None
    function: Any = dataclasses.field(repr=False)
    loaded: Any = dataclasses.field(repr=False)  # keeps the restored variables alive
    num_classes: int | None = None

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


def load_classifier(
    path: str, probe_images: np.ndarray | None, num_classes: int | None = DEFAULT_NUM_CLASSES
) -> Classifier:
    """Loads a classifier SavedModel and checks it on a probe batch.

    Args:
      path: the SavedModel directory.
      probe_images: a few float32 test images [n, H, W, 3] in [0, 1] (n ≥ 2) to check the output shape with
        (None: two grey images of the signature's own image size, which must then be fixed).
      num_classes: the test data's class count: the model must output that many scores (None: any K ≥ 2, for
        callers that learn the class count from the model, as the Python API does).

    Returns:
      The classifier. A signature named "serving_default" is preferred; then the others in name order.

    Raises:
      UsageError: not a SavedModel, unreadable, or no signature that maps [N, H, W, 3] images to [N, K] scores.
    """
    if not os.path.exists(path):
        raise UsageError(f"{path} does not exist (not a SavedModel directory)")
    if not tf.saved_model.contains_saved_model(path):
        raise UsageError(f"{path} is not a SavedModel directory (no saved_model.pb)")
    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:  # a corrupt or incompatible SavedModel raises many different types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"cannot load SavedModel {path}: {first[:200]}") from e
    return classifier_from_saved_model(loaded, probe_images, path, num_classes)


def classifier_from_saved_model(
    loaded: Any,
    probe_images: np.ndarray | None,
    path: str | None = None,
    num_classes: int | None = DEFAULT_NUM_CLASSES,
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
    image_shape = tuple(probe_images.shape[1:]) if probe_images is not None else (None, None, 3)
    for name in order:
        sig = signatures[name]
        image_input, output = _image_input(sig, image_shape), _score_output(sig, num_classes)
        if image_input is None or output is None:
            continue
        input_name, spec = image_input
        output_name, kind = output
        batch = spec.shape[0]
        probe = _probe_batch(probe_images if probe_images is not None else _grey_probe(spec, where, name), batch)
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
        return Classifier(path or "", name, input_name, output_name, kind, batch, sig, loaded, int(scores.shape[1]))
    shape = ",".join(str(d) for d in image_shape[:2]) if probe_images is not None else "H,W"
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
    takes_images = any(_image_input(signatures[n], image_shape) for n in order)
    inputs = "" if takes_images else f"; their inputs are not float32 [N,{shape},3] images"
    raise UsageError(
        f"{where} has no signature mapping float32 [N,{shape},3] images in [0,1] to [N,{num_classes or 'K'}] logits "
        f"(signatures: {_describe_signatures(signatures)}){inputs}"
    )


def _grey_probe(spec: tf.TensorSpec, where: str, name: str) -> np.ndarray:
    """Two grey images of the size `spec` fixes (when no test images are at hand to probe with)."""
    if not spec.shape[1:].is_fully_defined():
        raise UsageError(f"{where}: signature {name!r} takes images of any size {spec.shape}; give probe images")
    return np.full([2, *spec.shape[1:]], 0.5, np.float32)


def _probe_batch(images: np.ndarray, batch: int | None) -> np.ndarray:
    if batch is None:
        return images
    reps = -(-batch // len(images))
    return np.concatenate([images] * reps)[:batch]


def logits_function(path: str) -> tuple[Any, Classifier]:
    """Opens a classifier SavedModel (`load_classifier`, on a grey probe of the signature's image size).

    Returns:
      (the loaded object — keep it alive while the function is used, images → logits function).

    Raises:
      UsageError: as `load_classifier`.
    """
    classifier = load_classifier(path, None, num_classes=None)
    return classifier.loaded, classifier


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
            fn = load_classifier(path, None, num_classes=None)
            loaded = fn.loaded
            self.image_shapes.append(tuple(_image_input(fn.function, (None, None, 3))[1].shape[1:]))
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
