"""Standard and robust accuracy over a test set, and the gradient-masking checks (SPEC §6, §9).

Robust accuracy follows AutoAttack's worst case: an example counts as robust only if the model classifies it
correctly when clean *and* after every restart of the attack. Each (attack, batch, restart) draws its random start
from its own stateless seed derived from the run's seed and the attack's name, so a result does not depend on the
order of `--attacks` or on which other attacks ran.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from advss_tf.attacks.losses import cw_margin
from advss_tf.attacks.registry import MONOTONE_PAIRS, AttackSpec, perturbation_norm

ModelFn = Callable[[tf.Tensor], tf.Tensor]
IMAGE_SIGNATURE = tf.TensorSpec([None, 32, 32, 3], tf.float32)
# Accuracy differences within this much are noise (random starts), not a masking signal: half a point, or two
# examples on small test sets.
MASKING_TOLERANCE = 0.005
MASKING_TOLERANCE_EXAMPLES = 2
# More than this fraction of test images with an all-zero input gradient of the (non-saturating) margin loss means
# the model hides its gradients.
ZERO_GRADIENT_LIMIT = 0.01
SHOWN_EXAMPLES = 6


@dataclasses.dataclass
class AttackOutcome:
    """One attack over the test set: which examples stayed robust, how long it took, the largest perturbation."""

    spec: AttackSpec
    robust: np.ndarray  # bool [N]
    seconds: float  # attacking, tracing excluded
    cpu_seconds: float  # this process's CPU time (all threads) while attacking: comparable on a shared machine
    trace_seconds: float
    max_perturbation: float
    shown_adversarial: np.ndarray  # float32 [k, 32, 32, 3]: the first images' adversarial versions, for figures

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.robust)) if len(self.robust) else 0.0

    def to_dict(self) -> dict[str, Any]:
        n = len(self.robust)
        return {
            **self.spec.to_dict(),
            "accuracy": self.accuracy,
            "num_robust": int(np.sum(self.robust)),
            "num_examples": n,
            "max_perturbation": self.max_perturbation,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "trace_seconds": self.trace_seconds,
            "images_per_sec": n / self.seconds if self.seconds > 0 else None,
        }


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def to_float(images_uint8: np.ndarray) -> np.ndarray:
    return images_uint8.astype(np.float32) / 255.0


def padded(x: np.ndarray, size: int | None) -> np.ndarray:
    """`x` repeated at its last row up to `size` rows (for signatures with a fixed batch size); the caller drops
    the padding's results. With `size` None, `x` itself."""
    if size is None or len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


def attack_seed(seed: int, name: str, batch: int, restart: int) -> np.ndarray:
    """The stateless seed [2] of one (attack, batch, restart): independent of the other attacks and their order."""
    return np.array([seed, zlib.crc32(f"{name}/{batch}/{restart}".encode())], np.int64)


def _signature(fixed_batch: int | None) -> list[tf.TensorSpec]:
    return [
        tf.TensorSpec([fixed_batch, 32, 32, 3], tf.float32),
        tf.TensorSpec([fixed_batch], tf.int64),
    ]


def clean_evaluation(
    model_fn: ModelFn,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    fixed_batch: int | None,
    progress: bool,
) -> dict[str, Any]:
    """Clean predictions plus the gradient health of every test image.

    Args:
      model_fn: float32 images [N, 32, 32, 3] in [0, 1] → logits [N, 10].
      images: uint8 [N, 32, 32, 3]; labels: int [N].
      batch_size: images per call (the signature's fixed size, if it has one).
      fixed_batch: the signature's fixed batch size (batches are padded to it), or None.
      progress: show a progress bar.

    Returns:
      {"correct": bool [N], "zero_gradient": bool [N], "nonfinite_gradient": bool [N]}: the margin loss's input
      gradient is all zero / has a NaN or Inf.
    """

    @tf.function(input_signature=_signature(fixed_batch), reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = model_fn(x)
            # The uncapped margin saturates nowhere: softmax rounding to 1 zeroes the CE gradient of a confident
            # healthy model, and CW's cap κ zeroes it far past the boundary. An all-zero gradient here means none.
            loss = cw_margin(y, logits, confidence=float("inf"))
        grad = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        axes = [1, 2, 3]
        finite = tf.reduce_all(tf.math.is_finite(grad), axis=axes) & tf.reduce_all(tf.math.is_finite(logits), axis=-1)
        zero = tf.reduce_all(tf.equal(grad, 0.0), axis=axes)
        return tf.argmax(logits, -1) == y, zero, ~finite

    n = len(images)
    out = {k: np.zeros([n], bool) for k in ("correct", "zero_gradient", "nonfinite_gradient")}
    bar = keras.utils.Progbar(n, stateful_metrics=["acc"], unit_name="image") if progress else None
    for sl in batch_slices(n, batch_size):
        k = sl.stop - sl.start
        x = padded(to_float(images[sl]), fixed_batch)
        y = padded(labels[sl].astype(np.int64), fixed_batch)
        for key, value in zip(("correct", "zero_gradient", "nonfinite_gradient"), step(x, y)):
            out[key][sl] = value.numpy()[:k]
        if bar is not None:
            bar.update(sl.stop, values=[("acc", float(np.mean(out["correct"][: sl.stop])))])
    return out


class Predictor:
    """Whether a model classifies uint8 images correctly, in batches, through one traced forward pass."""

    def __init__(self, model_fn: ModelFn, fixed_batch: int | None = None):
        self.fixed_batch = fixed_batch
        self._step = tf.function(
            lambda x, y: tf.argmax(model_fn(x), -1) == y, input_signature=_signature(fixed_batch), reduce_retracing=True
        )

    def correct(self, images: np.ndarray, labels: np.ndarray, batch_size: int) -> np.ndarray:
        """bool [N]: prediction == label for each image (uint8 [N, 32, 32, 3]); forward passes only."""
        out = np.zeros([len(images)], bool)
        for sl in batch_slices(len(images), batch_size):
            x = padded(to_float(images[sl]), self.fixed_batch)
            y = padded(labels[sl].astype(np.int64), self.fixed_batch)
            out[sl] = self._step(x, y).numpy()[: sl.stop - sl.start]
        return out


def run_attack(
    model_fn: ModelFn,
    spec: AttackSpec,
    images: np.ndarray,
    labels: np.ndarray,
    clean_correct: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    fixed_batch: int | None = None,
    progress: bool = False,
) -> AttackOutcome:
    """Robust accuracy under one attack (worst case over its restarts, counting clean mistakes as failures).

    Args:
      model_fn: float32 images [N, 32, 32, 3] in [0, 1] → logits [N, 10].
      spec: the attack.
      images: uint8 [N, 32, 32, 3]; labels: int [N]; clean_correct: bool [N] from `clean_evaluation`.
      batch_size: images per attack call; fixed_batch: the signature's fixed batch size or None.
      seed: the run's seed.
      progress: show a progress bar.

    Returns:
      The outcome.
    """

    @tf.function(input_signature=[*_signature(fixed_batch), tf.TensorSpec([2], tf.int64)], reduce_retracing=True)
    def step(x, y, s):
        x_adv = spec(model_fn, x, y, s)
        correct = tf.argmax(model_fn(x_adv), -1) == y
        return x_adv, correct, tf.reduce_max(perturbation_norm(x_adv, x, spec.norm))

    n = len(images)
    robust = clean_correct.copy()
    shown = to_float(images[:SHOWN_EXAMPLES])
    shown_final = np.zeros([len(shown)], bool)
    max_pert = 0.0
    bar = keras.utils.Progbar(n, stateful_metrics=["robust_acc"], unit_name="image") if progress else None
    start = time.perf_counter()
    step.get_concrete_function()  # trace before the clock starts: images/s measures the attack, not tracing
    trace_seconds = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), time.process_time()
    for b, sl in enumerate(batch_slices(n, batch_size)):
        k = sl.stop - sl.start
        x = padded(to_float(images[sl]), fixed_batch)
        y = padded(labels[sl].astype(np.int64), fixed_batch)
        for r in range(spec.restarts):
            x_adv, correct, pert = step(x, y, attack_seed(seed, spec.name, b, r))
            correct = correct.numpy()[:k]
            if b == 0:
                # Show the restart that first fooled each shown image (else the last one).
                take = ~shown_final
                shown[take] = x_adv.numpy()[: len(shown)][take]
                shown_final |= ~correct[: len(shown)]
            robust[sl] &= correct
            max_pert = max(max_pert, float(pert))
        if bar is not None:
            bar.update(sl.stop, values=[("robust_acc", float(np.mean(robust[: sl.stop])))])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return AttackOutcome(spec, robust, seconds, cpu_seconds, trace_seconds, max_pert, shown.astype(np.float32))


def masking_flags(
    accuracies: dict[str, float],
    num_examples: int,
    zero_gradient_fraction: float = 0.0,
    nonfinite_gradient_fraction: float = 0.0,
) -> list[dict[str, Any]]:
    """Signs of gradient masking: a stronger attack scoring higher than a weaker one, or gradients zero / NaN.

    Args:
      accuracies: attack name → robust accuracy.
      num_examples: test examples (sets the tolerance).
      zero_gradient_fraction, nonfinite_gradient_fraction: from `clean_evaluation`.

    Returns:
      One {"check", "message", ...} per sign found; empty when none.
    """
    tol = max(MASKING_TOLERANCE, MASKING_TOLERANCE_EXAMPLES / max(num_examples, 1))
    flags = []
    for stronger, weaker, what in MONOTONE_PAIRS:
        if stronger in accuracies and weaker in accuracies and accuracies[stronger] > accuracies[weaker] + tol:
            flags.append(
                {
                    "check": f"{stronger}<={weaker}",
                    "message": f"{what}: {stronger} {accuracies[stronger]:.4f} > {weaker} {accuracies[weaker]:.4f}",
                    "tolerance": tol,
                }
            )
    if zero_gradient_fraction > ZERO_GRADIENT_LIMIT:
        flags.append(
            {
                "check": "zero_gradients",
                "message": f"input gradients are exactly zero for {zero_gradient_fraction:.1%} of test images",
            }
        )
    if nonfinite_gradient_fraction > 0:
        flags.append(
            {
                "check": "nonfinite_gradients",
                "message": f"input gradients are NaN/Inf for {nonfinite_gradient_fraction:.1%} of test images",
            }
        )
    for f in flags:
        logging.warning("possible gradient masking: %s", f["message"])
    return flags
