"""Auto-PGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"): PGD with momentum and a step size that halves at checkpoints when progress stalls.

Written from the paper and the reference ``fra31/auto-attack`` ``autoattack/autopgd_base.py`` (L∞ and L2):

- start: x + ε·t/‖t‖ (t uniform in [-1, 1]^d for L∞, Gaussian for L2), clipped to [0, 1]; initial step η = 2ε;
- step: z = P(x_k + η·s(∇)), x_{k+1} = P(x_k + a·(z − x_k) + (1 − a)·(x_k − x_{k−1})), a = 1 at the first step and
  0.75 after (s = sign for L∞, ∇/‖∇‖₂ for L2; P projects onto the ε-ball and [0, 1]);
- checkpoints: the first after ⌈0.22·N⌉ iterations, each next interval 0.03·N shorter, never below 0.06·N;
- at a checkpoint, an example's η halves and it restarts from its best point (highest loss) when either
  (1) the loss rose in at most ρ = 75% of the iterations since the last checkpoint, or
  (2) η was not halved at the previous checkpoint and the best loss has not improved since it.

One difference from the reference code, which compares the first iterate of the run against an unfilled (zero)
loss slot when counting condition (1): here it is compared with the loss at the starting point, as the paper
writes the sum. The attack returns, per example, the last misclassified iterate if one was found, else the
highest-loss point; the loop ends early once every example is fooled. APGD-T (`apgd_targeted`) runs the same
loop on the targeted DLR loss once per target class. Restarts are run by the caller (a fresh seed each; an example
is robust only if it survives all).

Expectation over Transformation (`eot_samples` > 1; AutoAttack's `rand` version for randomised models: 20): each
iteration's gradient is the mean of `eot_samples` gradients, one per forward pass of the (random) model; as the
reference, the loss and the prediction an iteration records are the last pass's.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from advss_tf.attacks.l2 import l2_normalize, per_example, project_l2
from advss_tf.attacks.losses import dlr_targeted
from advss_tf.attacks.pgd import LossFn, ModelFn, cross_entropy
from advss_tf.attacks.targets import STACK_ROWS, compacts, each_target, settled_examples, stacked

NORMS = ("linf", "l2")
MOMENTUM = 0.75  # a: weight of the new step against the previous displacement
RHO = 0.75  # ρ: the fraction of successful iterations below which the step size halves


def checkpoint_schedule(steps: int) -> tuple[int, int, int]:
    """(first checkpoint interval, minimum interval, interval decrement) for `steps` iterations, as the reference."""
    return max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)


def loss_logits_and_gradient(
    model_fn: ModelFn, x: tf.Tensor, y, loss_fn: LossFn
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(per-example loss [N], model output, d sum(loss)/dx); a model with no path from x to its output gives 0."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model_fn(x)
        loss = loss_fn(y, logits)
    grad = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return loss, logits, grad


def eot_loss_logits_and_gradient(
    model_fn: ModelFn, x: tf.Tensor, y, loss_fn: LossFn, samples: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`loss_logits_and_gradient` with the gradient averaged over `samples` forward passes (EOT); the loss and
    output are the last pass's. A `tf.while_loop`, so 20 samples do not unroll 20 copies of the model."""
    loss, logits, grad = loss_logits_and_gradient(model_fn, x, y, loss_fn)
    if samples == 1:
        return loss, logits, grad

    def body(k, grad_sum, _, __):
        loss_k, logits_k, grad_k = loss_logits_and_gradient(model_fn, x, y, loss_fn)
        return k + 1, grad_sum + grad_k, loss_k, logits_k

    _, grad_sum, loss, logits = tf.while_loop(lambda k, *_: k < samples, body, (tf.constant(1), grad, loss, logits))
    return loss, logits, grad_sum / float(samples)


def _project(x_adv: tf.Tensor, x: tf.Tensor, eps: float, norm: str) -> tf.Tensor:
    if norm == "linf":
        return tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)
    return project_l2(x_adv, x, eps)


def _direction(grad: tf.Tensor, norm: str) -> tf.Tensor:
    return tf.sign(grad) if norm == "linf" else l2_normalize(grad)


def _random_start(x: tf.Tensor, eps: float, norm: str, seed: tf.Tensor) -> tf.Tensor:
    # A point on the ball's surface (in L∞: at least one coordinate at ±ε), as the reference.
    if norm == "linf":
        t = tf.random.stateless_uniform(tf.shape(x), seed=seed, minval=-1.0, maxval=1.0, dtype=x.dtype)
        t = t / per_example(tf.reduce_max(tf.abs(t), axis=tf.range(1, tf.rank(t))) + 1e-12, t)
    else:
        t = l2_normalize(tf.random.stateless_normal(tf.shape(x), seed=seed, dtype=x.dtype))
    return tf.clip_by_value(x + eps * t, 0.0, 1.0)


def apgd(
    model_fn: ModelFn,
    x: tf.Tensor,
    y,
    *,
    eps: float,
    steps: int,
    seed: tf.Tensor,
    step_size: float | None = None,
    norm: str = "linf",
    loss_fn: LossFn = cross_entropy,
    eot_samples: int = 1,
    fast: bool = True,
    **unused,
) -> tf.Tensor:
    """Auto-PGD with momentum and the checkpointed step-size schedule (see the module docstring).

    Args:
      model_fn: images in [0, 1] → logits [N, K] (the output is also used to see which examples are fooled).
      x: clean images [N, H, W, C] in [0, 1].
      y: integer labels [N].
      eps: radius on the [0, 1] pixel scale (L∞ or L2 per `norm`).
      steps: iterations (the paper: 100).
      seed: int32/int64 [2] for the stateless random start.
      step_size: the initial step η; default 2ε as the paper (it halves from there).
      norm: "linf" or "l2".
      loss_fn: (labels, logits) → per-example loss to ascend: cross_entropy (APGD-CE) or losses.dlr (APGD-DLR).
      eot_samples: gradients averaged per iteration (Expectation over Transformation; 1: none).
      fast: a fooled example stops at once (`apgd_run`'s `settled`; dynamic batch dimension only); False: the plain
        path, every example to the end. The same examples end fooled either way.

    Returns:
      The adversarial images [N, H, W, C], gradient-stopped.
    """
    _check_norm(norm)
    x = tf.convert_to_tensor(x)
    labels = tf.cast(y, tf.int64)
    if fast and compacts(x):
        loss_of, settled = (lambda logits, take: loss_fn(take(labels), logits)), (lambda fooled: fooled)
    else:
        loss_of, settled = (lambda logits: loss_fn(labels, logits)), None
    x_adv, _ = apgd_run(
        model_fn,
        x,
        labels,
        loss_of,
        x_start=_random_start(x, eps, norm, seed),
        eps=eps,
        steps=steps,
        step_size=step_size,
        norm=norm,
        eot_samples=eot_samples,
        settled=settled,
    )
    return tf.stop_gradient(x_adv)


def apgd_targeted(
    model_fn: ModelFn,
    x: tf.Tensor,
    y,
    *,
    eps: float,
    steps: int,
    seed: tf.Tensor,
    targets: int = 9,
    step_size: float | None = None,
    norm: str = "linf",
    fast: bool = True,
    **unused,
) -> tf.Tensor:
    """APGD-T: one targeted APGD run on `losses.dlr_targeted` per target class (AutoAttack's second component).

    The targets are the `targets` classes with the highest clean logits besides the true one; each run attacks only
    the examples no earlier run fooled, from its own random start (see `advss_tf.attacks.targets`). Other arguments
    as `apgd` (the standard version: 9 targets, 100 steps each, η₀ = 2ε). `fast` (dynamic batch dimension only):
    the targets of few survivors run stacked in one run (`each_target`'s `rows`) and an example stops once one of
    its targets fooled it; False: the plain path, one target after another. The same examples end fooled either way.

    Returns:
      Per example the first adversarial point found, else the last run's highest-loss point; gradient-stopped.
    """
    _check_norm(norm)
    x = tf.convert_to_tensor(x)
    labels = tf.cast(y, tf.int64)
    fast = fast and compacts(x)

    def run(x_rows, labels_rows, loss_of, x_start, settled=None):
        return apgd_run(
            model_fn,
            x_rows,
            labels_rows,
            loss_of,
            x_start=x_start,
            eps=eps,
            steps=steps,
            step_size=step_size,
            norm=norm,
            settled=settled,
        )

    def run_group(take, targets_group, seeds):
        if not fast:  # one target (targets_group [1, M]): the plain run
            x_k, labels_k, target = take(x), take(labels), targets_group[0]
            start = take(_random_start(x, eps, norm, seeds[0]))
            return run(x_k, labels_k, lambda logits: dlr_targeted(labels_k, target, logits), start)
        group = tf.shape(targets_group)[0]
        starts = tf.map_fn(lambda seed_k: take(_random_start(x, eps, norm, seed_k)), seeds, fn_output_signature=x.dtype)
        x_rows, labels_rows = stacked(take(x), group), stacked(take(labels), group)
        target_rows = tf.reshape(targets_group, [-1])
        loss_of = lambda logits, take: dlr_targeted(take(labels_rows), take(target_rows), logits)  # noqa: E731
        return run(x_rows, labels_rows, loss_of, tf.reshape(starts, tf.shape(x_rows)), settled_examples(group))

    rows = STACK_ROWS if fast else None
    return each_target(run_group, model_fn, x, labels, count=targets, seed=seed, rows=rows)


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def apgd_run(
    model_fn: ModelFn,
    x: tf.Tensor,
    labels: tf.Tensor,
    loss_of: Callable[..., tf.Tensor],
    *,
    x_start: tf.Tensor,
    eps: float,
    steps: int,
    step_size: float | None,
    norm: str,
    eot_samples: int = 1,
    settled: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """One APGD run from `x_start` ascending the per-example loss: (result images, fooled bool [N]).

    The result is, per example, the last misclassified iterate if one was found, else the highest-loss point.
    `eot_samples` > 1: each gradient is the mean over that many forward passes (`eot_loss_logits_and_gradient`).

    Args:
      loss_of: logits → loss [N]; with `settled`, (logits of some rows, take) → their loss, `take` picking those
        rows out of a per-example tensor [N, ...].
      settled: fooled bool [N] → bool [N], the rows whose outcome is settled: they stop (their state stays as it
        was) and the other rows run on alone (a dynamic batch dimension). None: every row runs every iteration, as
        the reference, until all are fooled. Either way an example is fooled exactly when it is on the plain path:
        each row's iterates are computed alike, only a fooled example's returned point may be an earlier iterate.
    """
    if eot_samples < 1:
        raise ValueError(f"eot_samples must be >= 1, got {eot_samples}")
    eta0 = 2.0 * eps if step_size is None else float(step_size)
    first_interval, min_interval, interval_decrement = checkpoint_schedule(steps)

    def evaluate(x_adv, take):
        loss = (lambda _, logits: loss_of(logits)) if settled is None else (lambda _, logits: loss_of(logits, take))
        return eot_loss_logits_and_gradient(model_fn, x_adv, None, loss, eot_samples)

    x_adv = x_start
    every = lambda t: t  # noqa: E731
    loss, logits, grad = evaluate(x_adv, every)
    n = tf.shape(x)[0]
    state = dict(
        x_adv=x_adv,
        x_prev=x_adv,
        grad=grad,
        loss_prev=loss,
        increases=tf.zeros([n], tf.int32),  # iterations since the last checkpoint whose loss rose
        eta=tf.fill([n], tf.constant(eta0, x.dtype)),
        x_best=x_adv,
        grad_best=grad,
        loss_best=loss,
        loss_best_at_check=loss,
        halved_at_check=tf.ones([n], tf.bool),  # as the reference: condition (2) is off at the first checkpoint
        fooled=tf.argmax(logits, axis=-1) != labels,
        x_fooled=x_adv,
    )
    # The checkpoint counters are the same for every row (all run in step).
    schedule = dict(since_check=tf.constant(0), interval=tf.constant(first_interval))

    def step(i, s, schedule, take):
        """One iteration on the rows `take` picks: their state s → their next state, and the next schedule."""
        s = dict(s)
        x_rows = take(x)
        a = tf.where(i > 0, MOMENTUM, 1.0)
        eta = per_example(s["eta"], x_rows)
        z = _project(s["x_adv"] + eta * _direction(s["grad"], norm), x_rows, eps, norm)
        momentum_step = s["x_adv"] - s["x_prev"]
        x_new = _project(s["x_adv"] + a * (z - s["x_adv"]) + (1.0 - a) * momentum_step, x_rows, eps, norm)
        x_new = tf.stop_gradient(x_new)
        s["x_prev"] = s["x_adv"]
        loss, logits, grad = evaluate(x_new, take)

        now_fooled = tf.argmax(logits, axis=-1) != take(labels)
        s["x_fooled"] = tf.where(per_example(now_fooled, x_rows), x_new, s["x_fooled"])
        s["fooled"] = s["fooled"] | now_fooled
        improved = loss > s["loss_best"]
        s["x_best"] = tf.where(per_example(improved, x_rows), x_new, s["x_best"])
        s["grad_best"] = tf.where(per_example(improved, x_rows), grad, s["grad_best"])
        s["loss_best"] = tf.where(improved, loss, s["loss_best"])
        s["increases"] = s["increases"] + tf.cast(loss > s["loss_prev"], tf.int32)
        s["loss_prev"] = loss
        since_check = schedule["since_check"] + 1

        interval = schedule["interval"]
        at_check = tf.equal(since_check, interval)
        oscillating = tf.cast(s["increases"], tf.float32) <= RHO * tf.cast(interval, tf.float32)
        stalled = ~s["halved_at_check"] & (s["loss_best_at_check"] >= s["loss_best"])
        halve = at_check & (oscillating | stalled)
        s["eta"] = tf.where(halve, s["eta"] / 2.0, s["eta"])
        s["x_adv"] = tf.where(per_example(halve, x_rows), s["x_best"], x_new)
        s["grad"] = tf.where(per_example(halve, x_rows), s["grad_best"], grad)
        s["halved_at_check"] = tf.where(at_check, oscillating | stalled, s["halved_at_check"])
        s["loss_best_at_check"] = tf.where(at_check, s["loss_best"], s["loss_best_at_check"])
        s["increases"] = tf.where(at_check, tf.zeros_like(s["increases"]), s["increases"])
        schedule = dict(
            since_check=tf.where(at_check, 0, since_check),
            interval=tf.where(at_check, tf.maximum(interval - interval_decrement, min_interval), interval),
        )
        return s, schedule

    def body(i, s, schedule):
        if settled is None:
            return (i + 1, *step(i, s, schedule, every))
        rows = tf.where(~settled(s["fooled"]))
        take = lambda t: tf.gather_nd(t, rows)  # noqa: E731
        new, schedule = step(i, {k: take(v) for k, v in s.items()}, schedule, take)
        return i + 1, {k: tf.tensor_scatter_nd_update(s[k], rows, new[k]) for k in s}, schedule

    def standing(i, s, _):
        if settled is None:
            # Once every example is fooled nothing is left to find: stop (the reference runs on; only which
            # adversarial point a fooled example returns differs).
            return (i < steps) & ~tf.reduce_all(s["fooled"])
        return (i < steps) & ~tf.reduce_all(settled(s["fooled"]))

    _, state, _ = tf.while_loop(standing, body, (tf.constant(0), state, schedule))
    result = tf.where(per_example(state["fooled"], x), state["x_fooled"], state["x_best"])
    return result, state["fooled"]
