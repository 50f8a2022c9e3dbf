"""Running an attack on the examples still standing, and once per target class (APGD-T, FAB-T).

AutoAttack's targeted attacks run one attack per target class — the classes with the highest clean logits other than
the true one — and an example leaves the pool as soon as one run fools it, keeping that first adversarial point.

Shrinking the batch to the survivors saves most of the work once many examples are fooled, but a model traced for a
fixed batch size cannot take a smaller one. So the batch is compacted (gather the survivors, run, scatter back) only
when the batch dimension is not static — the evaluator's `tf.function` with a `None` batch, for instance; with a
static batch (eager calls, fixed-batch signatures) every example is run and the fooled ones are left untouched. Both
paths give each example the same result: every computation is per example and the randomness is drawn for the whole
batch before the survivors are taken from it.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from advss_tf.attacks.l2 import per_example

# take(t): the rows of a whole-batch tensor t that belong to the examples being attacked.
Take = Callable[[tf.Tensor], tf.Tensor]


def compacts(x: tf.Tensor) -> bool:
    """Whether attacks on x may shrink the batch to the survivors (its batch dimension is not static)."""
    return tf.compat.dimension_value(x.shape[0]) is None


def top_other_classes(logits: tf.Tensor, labels: tf.Tensor, count: int) -> tf.Tensor:
    """The `count` classes with the highest logits other than the label, best first: int64 [N, count]."""
    logits = tf.cast(logits, tf.float32)
    onehot = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1]) > 0.5
    others = tf.where(onehot, tf.constant(-float("inf")), logits)
    return tf.cast(tf.math.top_k(others, k=count).indices, tf.int64)


def check_target_count(count: int, num_classes: int) -> None:
    """Raises ValueError unless 1 ≤ count ≤ num_classes − 1 (static class counts only)."""
    if count < 1 or (num_classes is not None and count > num_classes - 1):
        raise ValueError(f"target classes must be in [1, {num_classes} - 1], got {count}")


def on_survivors(
    run: Callable[[Take], tuple[tf.Tensor, tf.Tensor]], standing: tf.Tensor, x_out: tf.Tensor, values: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Runs `run(take)` → (images, per-example values) on the examples where `standing`, merged into the rest.

    Args:
      run: take → (images [M, ...], values [M]) for the M taken examples.
      standing: bool [N], the examples to run.
      x_out: images [N, ...]; values: [N], what the examples not run keep.

    Returns:
      (x_out, values) with the standing examples' rows replaced by the run's.
    """
    if compacts(x_out):
        rows = tf.where(standing)[:, 0:1]
        x_run, values_run = run(lambda t: tf.gather_nd(t, rows))
        x_out = tf.tensor_scatter_nd_update(x_out, rows, tf.cast(x_run, x_out.dtype))
        return x_out, tf.tensor_scatter_nd_update(values, rows, values_run)
    x_run, values_run = run(lambda t: t)
    return tf.where(per_example(standing, x_out), x_run, x_out), tf.where(standing, values_run, values)


def each_target(
    run_once: Callable[[Take, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]],
    model_fn: Callable[[tf.Tensor], tf.Tensor],
    x: tf.Tensor,
    labels: tf.Tensor,
    *,
    count: int,
    seed: tf.Tensor,
) -> tf.Tensor:
    """One run of `run_once(take, targets, seed_k)` per target class, each on the examples not yet fooled.

    Args:
      run_once: (take, target labels [M] of the taken examples, stateless seed [2] of this target) → (adversarial
        images [M, ...], fooled bool [M]).
      model_fn: images → logits; its clean logits rank the targets.
      x: clean images [N, ...]; labels: int [N].
      count: how many target classes (the top `count` non-true classes by clean logit, in that order).
      seed: int [2]; target k's run gets its k-th fold.

    Returns:
      Per example: the first adversarial point found; else the last run's point; clean mistakes stay clean.
    """
    labels = tf.cast(labels, tf.int64)
    clean_logits = model_fn(x)
    check_target_count(count, tf.compat.dimension_value(clean_logits.shape[-1]))
    targets = top_other_classes(clean_logits, labels, count)
    fooled = tf.argmax(clean_logits, axis=-1) != labels
    seed = tf.cast(seed, tf.int64)

    def body(k, fooled, x_out):
        seed_k = tf.random.experimental.stateless_fold_in(seed, tf.cast(k, tf.int64))
        target_k = targets[:, k]
        x_out, fooled = on_survivors(lambda take: run_once(take, take(target_k), seed_k), ~fooled, x_out, fooled)
        return k + 1, fooled, x_out

    _, _, x_out = tf.while_loop(
        lambda k, fooled, _: (k < count) & tf.reduce_any(~fooled), body, (tf.constant(0), fooled, x)
    )
    return tf.stop_gradient(x_out)
