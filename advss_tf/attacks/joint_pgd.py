"""Joint L∞ PGD over several inputs at once, with an optional regulariser on their input gradients.

The ensemble's attack (SPEC §5): one perturbation per task input; every step, input k moves by
α·sign(∇ₓₖ Σ_b L_k + λ·∇ₓₖ R(g_1, …, g_K)), where g_k = ∇ₓₖ Σ_b L_k and R is the diversity term. R depends on
gradients, so its own gradient needs nested GradientTapes (second order). With λ = 0 it is exactly K independent
`pgd_linf` attacks (same seeds, same steps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from advss_tf.attacks.diversity import input_gradients

PerExampleLoss = Callable[[tf.Tensor], tf.Tensor]


def joint_pgd_linf(
    loss_fns: Sequence[PerExampleLoss],
    inputs: Sequence[tf.Tensor],
    *,
    eps: float,
    step_size: float,
    steps: int,
    seed: tf.Tensor | None = None,
    random_start: bool = True,
    regularizer: Callable[[list[tf.Tensor]], tf.Tensor] | None = None,
    regularizer_weight: float = 0.0,
) -> tuple[tf.Tensor, ...]:
    """Adversarial versions of `inputs`, each within its own ε-ball and [0, 1].

    Args:
      loss_fns: loss_fns[k](x) → per-example loss [B] of input k, to ascend (BatchNorm mode chosen by closure).
      inputs: clean images [B, H, W, C] in [0, 1], one per loss.
      eps, step_size: on the [0, 1] pixel scale; steps: gradient steps.
      seed: int [2]; input k's uniform random start uses the k-th split of it (as `pgd_linf` would with that seed).
      regularizer: input gradients [g_1 … g_K] → scalar to ascend with weight `regularizer_weight` (summed over
        the batch, like the losses, so each example's step weighs its own loss and its own term as λ : 1).
      regularizer_weight: λ; 0 skips the second-order pass.

    Returns:
      A tuple of gradient-stopped adversarial inputs, in the order of `inputs`.
    """
    inputs = [tf.convert_to_tensor(x) for x in inputs]
    use_regularizer = regularizer is not None and regularizer_weight != 0.0
    if random_start:
        if seed is None:
            raise ValueError("joint_pgd_linf with random_start needs a seed")
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), len(inputs))
        advs = [
            tf.clip_by_value(
                x + tf.random.stateless_uniform(tf.shape(x), seed=seeds[k], minval=-eps, maxval=eps, dtype=x.dtype),
                0.0,
                1.0,
            )
            for k, x in enumerate(inputs)
        ]
    else:
        advs = list(inputs)

    def directions(advs):
        if not use_regularizer:
            _, grads = input_gradients(loss_fns, advs)
            return grads
        with tf.GradientTape(watch_accessed_variables=False) as outer:
            outer.watch(advs)
            _, grads = input_gradients(loss_fns, advs)
            reg = regularizer(grads)
        reg_grads = outer.gradient(reg, advs)
        return [g + regularizer_weight * r for g, r in zip(grads, reg_grads, strict=True)]

    def body(i, advs):
        new = []
        for x, x_adv, d in zip(inputs, advs, directions(list(advs)), strict=True):
            x_adv = x_adv + step_size * tf.sign(d)
            x_adv = tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)
            new.append(tf.stop_gradient(x_adv))
        return i + 1, tuple(new)

    _, advs = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), tuple(advs)))
    return tuple(tf.stop_gradient(a) for a in advs)
