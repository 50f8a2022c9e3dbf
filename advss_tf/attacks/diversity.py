"""The ensemble's gradient-diversity term h (SPEC §5): how differently the three pretext losses see an input.

For each example, G = [g_selfie, g_jigsaw, g_rotation] stacks the input gradients of the three task losses, each
flattened and L2-normalised (+1e-10); h_b = log det(GᵀG + 1e-5·I), and h = mean_b h_b. h is at most ≈ 0 (reached
when the three gradients are orthogonal, Hadamard's inequality) and ≈ log(3·10⁻¹⁰) ≈ -21.9 when they are parallel.

Sign convention (as the reference code, documented in docs/selfie_ensemble.md): both the attacker and the trainer
add +λ·h to what they optimise — the attack ascends L_task + λ·h, the trainer descends L + λ·h.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

RIDGE = 1e-5  # keeps GᵀG invertible when gradients are parallel
NORM_EPSILON = 1e-10


def safe_norm(x: tf.Tensor) -> tf.Tensor:
    """‖x‖₂ over the last axis (keepdims), with gradient 0 where x = 0 (tf.norm's is NaN there, PyTorch's is 0).

    An input gradient is exactly zero when the cross-entropy is fully saturated; differentiating h through tf.norm
    would then put NaN into every weight. Same value as tf.norm everywhere; the inner `where` keeps the sqrt's
    gradient finite on the branch that is not taken.
    """
    squared = tf.reduce_sum(tf.square(x), axis=-1, keepdims=True)
    positive = squared > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, squared, tf.ones_like(squared))), tf.zeros_like(squared))


def normalized_gradient_matrix(grads: Sequence[tf.Tensor], dtype: tf.DType = tf.float64) -> tf.Tensor:
    """K per-example gradients [B, ...] → G [B, n, K], each column flattened and divided by (‖g‖₂ + 1e-10)."""
    columns = []
    for g in grads:
        flat = tf.reshape(tf.cast(g, dtype), [tf.shape(g)[0], -1])
        columns.append(flat / (safe_norm(flat) + NORM_EPSILON))
    return tf.stack(columns, axis=2)


def per_example_log_det(grads: Sequence[tf.Tensor]) -> tf.Tensor:
    """h_b = log det(GᵀG + 1e-5·I) for each example: float32 [B]. Differentiable (twice, through the gradients)."""
    # In float64 (a few thousand numbers per example, next to nothing beside the model): for nearly parallel
    # gradients 1 - cosine is ~1e-5, where float32 rounding of the cosines already moves h by ~1e-3.
    g = normalized_gradient_matrix(grads, tf.float64)
    gram = tf.matmul(g, g, transpose_a=True)  # [B, K, K] of cosines
    gram += RIDGE * tf.eye(len(grads), dtype=tf.float64)[None]
    return tf.cast(tf.linalg.logdet(gram), tf.float32)


def diversity(grads: Sequence[tf.Tensor]) -> tf.Tensor:
    """h = mean over the batch of `per_example_log_det` (the reference's calculate_log_det)."""
    return tf.reduce_mean(per_example_log_det(grads))


def input_gradients(
    loss_fns: Sequence[Callable[[tf.Tensor], tf.Tensor]], inputs: Sequence[tf.Tensor]
) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
    """(per-example losses [B] of each loss_fns[k](inputs[k]), their input gradients ∂Σ_b loss_k / ∂inputs[k]).

    One backward pass for all K: loss k depends on input k only, so the gradient of the sum w.r.t. input k is loss
    k's own. Called under an outer GradientTape, the gradients are themselves differentiable (nested tapes), which
    is how h reaches the weights (training) or the inputs (the joint attack).
    """
    inputs = [tf.convert_to_tensor(x) for x in inputs]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(inputs)
        losses = [fn(x) for fn, x in zip(loss_fns, inputs, strict=True)]
        total = tf.add_n([tf.reduce_sum(loss) for loss in losses])
    return losses, tape.gradient(total, inputs)
