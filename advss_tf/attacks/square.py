"""Square Attack (Andriushchenko et al., ECCV 2020, "Square Attack: a query-efficient black-box adversarial attack
via random search"), L∞: AutoAttack's gradient-free component, so masked or broken gradients cannot hide from it.

Written from the paper (Algorithm 1 and its L∞ sampling distribution) and the reference ``fra31/auto-attack``
``autoattack/square.py``:

- start: vertical stripes, x + ε·s with one random sign s per (example, column, channel), clipped to [0, 1];
- each query: a square window of side h = round(√(p·H·W)) at a uniformly random position gets a random sign per
  channel, i.e. δ_window = ±2ε per channel added to the current best point, projected onto the ε-ball and [0, 1];
  the point is kept if the margin loss z_y − max_{i≠y} z_i decreased or the example is misclassified;
- p starts at p_init = 0.8 and halves on the paper's schedule (after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and
  8000 of 10,000 iterations), rescaled to the query budget as the reference does;
- an example stops once misclassified (margin ≤ 0).

One difference from the reference, which draws one window and one sign per batch: here each example draws its own,
as the paper's Algorithm 1 does per image. Only model outputs are used, never a gradient.
"""

from __future__ import annotations

import tensorflow as tf

from advss_tf.attacks.l2 import per_example
from advss_tf.attacks.losses import true_and_best_other
from advss_tf.attacks.pgd import ModelFn
from advss_tf.attacks.targets import on_survivors

P_INIT = 0.8
# The paper's schedule: p = p_init / 2^k after the k-th of these iterations (out of 10,000).
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SCHEDULE_LENGTH = 10_000


def p_schedule(i: tf.Tensor, queries: int, p_init: float = P_INIT) -> tf.Tensor:
    """Fraction p of pixels in the window at iteration i (0-based) of a run of `queries` iterations (float32)."""
    # As the reference: the iteration is rescaled to the 10,000-iteration schedule, rounding down.
    it = tf.cast(tf.cast(i, tf.int64) * SCHEDULE_LENGTH // queries, tf.float32)
    halvings = tf.reduce_sum(tf.cast(it > tf.constant(P_HALVINGS, tf.float32), tf.float32))
    return p_init * tf.pow(0.5, halvings)


def margin(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """z_y − max_{i≠y} z_i [N]: positive while the example is classified correctly."""
    true, other = true_and_best_other(labels, logits)
    return true - other


def square_linf(
    model_fn: ModelFn,
    x: tf.Tensor,
    y,
    *,
    eps: float,
    steps: int,
    seed: tf.Tensor,
    p_init: float = P_INIT,
    **unused,
) -> tf.Tensor:
    """Square Attack L∞ with `steps` random-search iterations (one model query each, plus one at the start).

    Args:
      model_fn: images in [0, 1] → logits [N, K]; only its outputs are used.
      x: clean images [N, H, W, C] in [0, 1] (H = W as the paper's windows are square).
      y: integer labels [N].
      eps: L∞ radius on the [0, 1] pixel scale.
      seed: int [2] for the stateless stripes, windows and signs.
      steps: the query budget, in iterations (AutoAttack's standard version: 5,000).
      p_init: the initial window fraction (the paper: 0.8).

    Returns:
      Per example the best point found (misclassified where the attack succeeded), gradient-stopped.
    """
    if steps < 1:
        raise ValueError(f"square needs at least one query, got {steps}")
    queries = steps
    x = tf.convert_to_tensor(x)
    labels = tf.cast(y, tf.int64)
    seed = tf.cast(seed, tf.int64)
    n, height, width, channels = tf.unstack(tf.shape(x))

    stripes = tf.random.stateless_uniform([n, 1, width, channels], seed=seed, minval=0, maxval=2, dtype=tf.int32)
    x_best = tf.clip_by_value(x + eps * (2.0 * tf.cast(stripes, x.dtype) - 1.0), 0.0, 1.0)
    margin_best = margin(labels, model_fn(x_best))
    pixels = tf.cast(height * width, tf.float32)

    def proposal(i):
        """Whole-batch window mask [N, H, W, 1] and signs [N, 1, 1, C] of iteration i."""
        seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, i), 3)
        side = tf.maximum(tf.cast(tf.round(tf.sqrt(p_schedule(i, queries, p_init) * pixels)), tf.int32), 1)
        side = tf.minimum(side, tf.minimum(height, width))
        top = tf.random.stateless_uniform([n], seed=seeds[0], minval=0, maxval=height - side + 1, dtype=tf.int32)
        left = tf.random.stateless_uniform([n], seed=seeds[1], minval=0, maxval=width - side + 1, dtype=tf.int32)
        rows = tf.range(height)[None, :]
        cols = tf.range(width)[None, :]
        in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
        in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
        window = tf.cast(in_rows[:, :, None, None] & in_cols[:, None, :, None], x.dtype)
        signs = tf.random.stateless_uniform([n, 1, 1, channels], seed=seeds[2], minval=0, maxval=2, dtype=tf.int32)
        return window, 2.0 * tf.cast(signs, x.dtype) - 1.0

    def body(i, x_best, margin_best):
        window, signs = proposal(tf.cast(i, tf.int64))

        def run(take):
            x_k, best_k = take(x), take(x_best)
            # Inside the window the new point is the ε-ball's corner of the drawn sign (best ± 2ε, projected).
            x_new = best_k + 2.0 * eps * take(window) * take(signs)
            x_new = tf.clip_by_value(tf.clip_by_value(x_new, x_k - eps, x_k + eps), 0.0, 1.0)
            margin_new = margin(take(labels), model_fn(x_new))
            # The margin loss is the loss: a lower margin, or a misclassification, is kept.
            keep = (margin_new < take(margin_best)) | (margin_new <= 0.0)
            return tf.where(per_example(keep, x_new), x_new, best_k), tf.where(keep, margin_new, take(margin_best))

        x_best, margin_best = on_survivors(run, margin_best > 0.0, x_best, margin_best)
        return i + 1, x_best, margin_best

    _, x_best, _ = tf.while_loop(
        lambda i, _, m: (i < queries) & tf.reduce_any(m > 0.0), body, (tf.constant(0), x_best, margin_best)
    )
    return tf.stop_gradient(x_best)
