"""ACL's contrastive PGD: both views of each image perturbed jointly to maximise NT-Xent between the two adversarial
views (ACL `train_simCLR.py:351-385`, `PGD_contrastive`; DynACL `train_DynACL.py:431-450` is the same loop).

Each step moves both views by α·sign(∇ NT-Xent(f(x̃₁), f(x̃₂))) and projects them onto their ε-balls and [0, 1]. The
model runs in inference mode through its adversarial BatchNorm route (`model.eval()(inputs + delta, 'pgd')` in
ACL): the caller's `model_fn` says so, as every attack here takes the BatchNorm mode by closure.

As ACL's loop, and unlike `pgd_linf`, the uniform random start is not clipped to [0, 1]: the first gradient is taken
at x + δ₀ wherever it falls; every step after it clips, so the result lies in [0, 1].

Under `tf.distribute` the loss is the global-batch NT-Xent (`nt_xent.nt_xent`, negatives gathered from every
replica, its gradient sent back through the gather), so each replica's views ascend the loss of the whole batch, as
on one device that holds it; `cross_replica=False` keeps each replica's attack to its own slice. The steps then run
as a Python loop (a collective cannot sit in a `tf.while_loop` under MirroredStrategy), else as a `tf.while_loop`.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from advss_tf.attacks.nt_xent import TEMPERATURE, nt_xent

EPSILON = 8.0 / 255.0  # PGD_contrastive(eps=8. / 255.): ACL train_simCLR.py:351
STEP_SIZE = 2.0 / 255.0  # alpha=2. / 255.: ACL train_simCLR.py:351
STEPS = 5  # --pgd_iter default 5: ACL train_simCLR.py:30, DynACL train_DynACL.py:52


def contrastive_pgd(
    embed_fn: Callable[[tf.Tensor], tf.Tensor],
    x1: tf.Tensor,
    x2: tf.Tensor,
    *,
    eps: float = EPSILON,
    step_size: float = STEP_SIZE,
    steps: int = STEPS,
    seed: tf.Tensor | None = None,
    random_start: bool = True,
    temperature: float = TEMPERATURE,
    cross_replica: bool = True,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Adversarial versions of the two views, each within its own ε-ball and [0, 1].

    Args:
      embed_fn: images [M, H, W, C] in [0, 1] → embeddings [M, D] (the projection head's output), with the model in
        inference mode through its adversarial BatchNorm (chosen by closure).
      x1, x2: the two views [n, H, W, C] in [0, 1]; row j of both comes from the same image. Here in the place of
        the house signature's `y`: what the loss compares the first input's output with.
      eps, step_size: on the [0, 1] pixel scale; steps: gradient steps.
      seed: int [2] for the uniform start (view 1 uses the first split of it, view 2 the second); required when
        `random_start`.
      temperature, cross_replica: as `nt_xent.nt_xent`.

    Returns:
      (x1_adv, x2_adv), gradient-stopped.
    """
    x1, x2 = tf.convert_to_tensor(x1), tf.convert_to_tensor(x2)
    if random_start:
        if seed is None:
            raise ValueError("contrastive_pgd with random_start needs a seed")
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
        a1 = x1 + tf.random.stateless_uniform(tf.shape(x1), seeds[0], -eps, eps, dtype=x1.dtype)
        a2 = x2 + tf.random.stateless_uniform(tf.shape(x2), seeds[1], -eps, eps, dtype=x2.dtype)
    else:
        a1, a2 = x1, x2

    def project(x, x_adv, grad):
        x_adv = tf.clip_by_value(x_adv + step_size * tf.sign(grad), x - eps, x + eps)
        return tf.stop_gradient(tf.clip_by_value(x_adv, 0.0, 1.0))

    def body(i, a1, a2):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch([a1, a2])
            z = embed_fn(tf.concat([a1, a2], axis=0))  # both views in one forward pass, as ACL
            loss = nt_xent(z[: tf.shape(a1)[0]], z[tf.shape(a1)[0] :], temperature, cross_replica)
        g1, g2 = tape.gradient(loss, [a1, a2], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return i + 1, project(x1, a1, g1), project(x2, a2, g2)

    state = (tf.constant(0), a1, a2)
    if _gathers_across_replicas(cross_replica):
        # The gather is a merge_call under MirroredStrategy, which a tf.while_loop body cannot hold: unrolled, ACL's
        # 5 steps add 5 forward/backward passes to the graph.
        for _ in range(steps):
            state = body(*state)
    else:
        state = tf.while_loop(lambda i, *_: i < steps, body, state)
    return tf.stop_gradient(state[1]), tf.stop_gradient(state[2])


def _gathers_across_replicas(cross_replica: bool) -> bool:
    ctx = tf.distribute.get_replica_context()
    return cross_replica and ctx is not None and ctx.num_replicas_in_sync > 1
