"""Per-example losses an attack ascends, besides cross-entropy: the CW margin and the DLR loss.

Both take ``(labels, logits)`` like ``advss_tf.attacks.pgd.cross_entropy`` and return float32 [N]. Unlike
cross-entropy they do not saturate on confident predictions (softmax rounding to exactly 1 zeroes the CE gradient),
which is why they find adversarial examples that CE-PGD misses.
"""

from __future__ import annotations

import tensorflow as tf

CW_CONFIDENCE = 50.0  # κ: the margin beyond which CW-PGD stops pushing (as in the TRADES/MART evaluation code)


def true_and_best_other(labels: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(logit of the true class [N], largest logit among the other classes [N]) in float32."""
    logits = tf.cast(logits, tf.float32)
    onehot = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1]) > 0.5
    true = tf.reduce_sum(tf.where(onehot, logits, 0.0), axis=-1)
    # -inf rather than a large negative constant: logits may be log-probabilities with any offset.
    other = tf.reduce_max(tf.where(onehot, tf.constant(-float("inf")), logits), axis=-1)
    return true, other


def cw_margin(labels: tf.Tensor, logits: tf.Tensor, confidence: float = CW_CONFIDENCE) -> tf.Tensor:
    """Carlini-Wagner margin loss min(max_{i≠y} z_i − z_y, κ): positive once the example is misclassified."""
    true, other = true_and_best_other(labels, logits)
    return tf.minimum(other - true, confidence)


def dlr(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Difference-of-logits-ratio loss (Croce & Hein 2020): −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12).

    z_π1 ≥ z_π2 ≥ z_π3 are the sorted logits. The ratio is invariant to shifting and rescaling the logits, so
    a model cannot hide behind logit scale. Needs at least 3 classes.
    """
    true, other = true_and_best_other(labels, logits)
    top3 = tf.math.top_k(tf.cast(logits, tf.float32), k=3).values
    return -(true - other) / (top3[:, 0] - top3[:, 2] + 1e-12)


def dlr_targeted(labels: tf.Tensor, targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Targeted DLR loss (APGD-T): −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12), with t the target class.

    Positive once the target's logit exceeds the true one; shift- and scale-invariant like `dlr`. The denominator
    leaves out z_π2 (likely the target itself) as the paper does. Needs at least 4 classes.
    """
    logits = tf.cast(logits, tf.float32)
    true = tf.gather(logits, tf.cast(labels, tf.int32), axis=1, batch_dims=1)
    target = tf.gather(logits, tf.cast(targets, tf.int32), axis=1, batch_dims=1)
    top4 = tf.math.top_k(logits, k=4).values
    return -(true - target) / (top4[:, 0] - 0.5 * (top4[:, 2] + top4[:, 3]) + 1e-12)
