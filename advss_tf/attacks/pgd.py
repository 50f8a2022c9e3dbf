"""L∞ projected gradient descent (Madry et al. 2018) and FGSM, in [0, 1] pixel space.

Every attack here is a function ``(model_fn, x, y, *, eps, step_size, steps, ...) -> x_adv`` that works eagerly,
inside a ``tf.function`` and inside a ``strategy.run`` replica step: the loop is a ``tf.while_loop`` (never
Python-unrolled, so the graph does not grow with ``steps``) and the result is ``tf.stop_gradient``-ed.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from advss_tf.errors import UsageError

ModelFn = Callable[[tf.Tensor], tf.Tensor]
LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example softmax cross-entropy with integer labels, in float32."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
    )


def check_budget(eps: float, step_size: float, steps: int) -> None:
    """Raises UsageError unless 0 < eps ≤ 1, step_size > 0 and steps ≥ 1 (all on the [0, 1] pixel scale)."""
    if not 0.0 < eps <= 1.0:
        raise UsageError(f"epsilon must be in (0, 1] on the [0,1] pixel scale, got {eps}")
    if step_size <= 0.0:
        raise UsageError(f"attack step size must be > 0, got {step_size}")
    if steps < 1:
        raise UsageError(f"attack steps must be >= 1, got {steps}")


def input_gradient(model_fn: ModelFn, x: tf.Tensor, y, loss_fn: LossFn) -> tuple[tf.Tensor, tf.Tensor]:
    """(per-example loss, d sum(loss) / dx). Each example's gradient is its own loss's (up to BatchNorm coupling).

    A model with no gradient path from its input (a `tf.stop_gradient`, a non-differentiable preprocessing step)
    gets a zero gradient, so the attack runs and leaves x where it is; evaluation flags such models as masking.
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = loss_fn(y, model_fn(x))
    return loss, tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def pgd_linf(
    model_fn: ModelFn,
    x: tf.Tensor,
    y,
    *,
    eps: float,
    step_size: float,
    steps: int,
    seed: tf.Tensor | None = None,
    random_start: bool = True,
    loss_fn: LossFn = cross_entropy,
) -> tf.Tensor:
    """L∞ PGD: x ← clip(Π_ε(x + α·sign(∇ₓ loss)), 0, 1), from a uniform random start in [-ε, ε].

    Args:
      model_fn: images in [0, 1] → whatever `loss_fn` takes (logits). Chooses the BatchNorm mode by closure.
      x: clean images [N, H, W, C] in [0, 1].
      y: what `loss_fn` compares the model output with (labels, or any nested structure).
      eps, step_size: on the [0, 1] pixel scale. steps: number of gradient steps.
      seed: int32/int64 [2] for the stateless random start (required when `random_start`).
      loss_fn: (y, model output) → per-example loss [N] to ascend.

    Returns:
      The adversarial images, gradient-stopped.
    """
    x = tf.convert_to_tensor(x)
    if random_start:
        if seed is None:
            raise ValueError("pgd_linf with random_start needs a seed")
        noise = tf.random.stateless_uniform(tf.shape(x), seed=seed, minval=-eps, maxval=eps, dtype=x.dtype)
        x_adv = tf.clip_by_value(x + noise, 0.0, 1.0)
    else:
        x_adv = x

    def body(i, x_adv):
        _, grad = input_gradient(model_fn, x_adv, y, loss_fn)
        x_adv = x_adv + step_size * tf.sign(grad)
        x_adv = tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)
        return i + 1, tf.stop_gradient(x_adv)

    _, x_adv = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), x_adv))
    return tf.stop_gradient(x_adv)


def fgsm(model_fn: ModelFn, x: tf.Tensor, y, *, eps: float, loss_fn: LossFn = cross_entropy, **unused) -> tf.Tensor:
    """Fast gradient sign method: one step of size ε from the clean image."""
    return pgd_linf(model_fn, x, y, eps=eps, step_size=eps, steps=1, random_start=False, loss_fn=loss_fn)
