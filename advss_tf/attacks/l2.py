"""L2 projected gradient descent in [0, 1] pixel space, and the L2 helpers APGD shares.

Same contract as ``advss_tf.attacks.pgd``: ``(model_fn, x, y, *, eps, step_size, steps, seed, ...) -> x_adv``,
a ``tf.while_loop`` inside, usable eagerly, in a ``tf.function`` and in a replica step, result gradient-stopped.
"""

from __future__ import annotations

import tensorflow as tf

from advss_tf.attacks.pgd import LossFn, ModelFn, cross_entropy, input_gradient

_TINY = 1e-12  # keeps a zero gradient / zero perturbation from dividing by zero


def per_example(values: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Reshapes a per-example vector [N] so it broadcasts against `like` [N, ...]."""
    return tf.reshape(values, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], 0))


def l2_norm(v: tf.Tensor) -> tf.Tensor:
    """Per-example L2 norm [N] of v [N, ...]."""
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=tf.range(1, tf.rank(v))))


def l2_normalize(v: tf.Tensor) -> tf.Tensor:
    """v / ‖v‖₂ per example (a zero vector stays zero)."""
    return v / per_example(l2_norm(v) + _TINY, v)


def project_l2(x_adv: tf.Tensor, x: tf.Tensor, eps: float | tf.Tensor) -> tf.Tensor:
    """Projects x_adv onto the L2 ball of radius eps around x, then clips to [0, 1].

    Clipping after projecting can only shrink the perturbation (the box and the ball both contain x), so the
    result stays inside the ball.
    """
    delta = x_adv - x
    scale = tf.minimum(1.0, eps / (l2_norm(delta) + _TINY))
    return tf.clip_by_value(x + delta * per_example(scale, delta), 0.0, 1.0)


def random_l2_start(x: tf.Tensor, eps: float, seed: tf.Tensor) -> tf.Tensor:
    """A uniform point in the L2 ball of radius eps around x (Gaussian direction, radius eps·u^(1/d)), clipped."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    direction = l2_normalize(tf.random.stateless_normal(tf.shape(x), seed=seeds[0], dtype=x.dtype))
    dim = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), x.dtype)
    u = tf.random.stateless_uniform(tf.shape(x)[:1], seed=seeds[1], dtype=x.dtype)
    radius = eps * tf.pow(u, 1.0 / dim)
    return tf.clip_by_value(x + direction * per_example(radius, x), 0.0, 1.0)


def pgd_l2(
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
    """L2 PGD: x ← clip(Π_{‖·‖₂≤ε}(x + α·∇/‖∇‖₂), 0, 1), from a uniform random start in the ε-ball.

    Args:
      model_fn: images in [0, 1] → logits (or whatever `loss_fn` takes).
      x: clean images [N, H, W, C] in [0, 1].
      y: labels (what `loss_fn` compares the model output with).
      eps: L2 radius on the [0, 1] pixel scale (0.5 is the usual CIFAR-10 budget); step_size: L2 length of a step.
      steps: number of gradient steps.
      seed: int32/int64 [2] for the stateless random start (required when `random_start`).
      loss_fn: (y, model output) → per-example loss [N] to ascend.

    Returns:
      The adversarial images, gradient-stopped.
    """
    x = tf.convert_to_tensor(x)
    if random_start:
        if seed is None:
            raise ValueError("pgd_l2 with random_start needs a seed")
        x_adv = random_l2_start(x, eps, seed)
    else:
        x_adv = x

    def body(i, x_adv):
        _, grad = input_gradient(model_fn, x_adv, y, loss_fn)
        if grad is None:  # a model with no path from input to output: no step to take
            grad = tf.zeros_like(x_adv)
        x_adv = project_l2(x_adv + step_size * l2_normalize(grad), x, eps)
        return i + 1, tf.stop_gradient(x_adv)

    _, x_adv = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), x_adv))
    return tf.stop_gradient(x_adv)
