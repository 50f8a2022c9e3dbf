"""Running an attack on the examples still standing, and once per target class (APGD-T, FAB-T).

AutoAttack's targeted attacks run one attack per target class — the classes with the highest clean logits other than
the true one — and an example leaves the pool as soon as one run fools it, keeping that first adversarial point.

Shrinking the batch to the survivors saves most of the work once many examples are fooled, but a model traced for a
fixed batch size cannot take a smaller one. So the batch is compacted (gather the survivors, run, scatter back) only
when the batch dimension is not static — the evaluator's `tf.function` with a `None` batch, for instance; with a
static batch (eager calls, fixed-batch signatures) every example is run and the fooled ones are left untouched. Both
paths give each example the same result: every computation is per example and the randomness is drawn for the whole
batch before the survivors are taken from it.

The fast path (`each_target(..., rows=R)`, dynamic batch only) runs several targets at once when the survivors are
too few to fill R rows: the runs of g targets on M survivors become one run on g·M stacked rows (target-major), and
an example takes the first of its g targets that fooled it. On a CPU an attack step costs per image up to twice as
much at a batch of 8-16 as at 64-256, so few survivors are where stacking pays (docs/benchmarks.md). Every row is
computed as the plain run computes it (the same start, target and per-row arithmetic), so an example is fooled by
some target of the group exactly when the plain path's runs of those targets fool it; which adversarial point a
fooled example returns may differ (another target's, or an earlier iterate), its outcome does not.
`settled_examples` lets such a run drop the rows of an example one of its targets has already fooled.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from advss_tf.attacks.l2 import per_example

# take(t): the rows of a whole-batch tensor t that belong to the examples being attacked.
Take = Callable[[tf.Tensor], tf.Tensor]
# The fast path's rows per run: targets are stacked while their runs fit in this many. An attack step's cost per image
# (tiny backbone, 2-core Xeon) falls by a fifth from a batch of 16 to 64 and hardly at all beyond; stacking more
# targets only adds the work of runs an earlier target would have made unnecessary.
STACK_ROWS = 64


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


def stacked(t: tf.Tensor, group) -> tf.Tensor:
    """`group` copies of the per-example tensor t [M, ...] one after another: [group·M, ...]."""
    return tf.tile(t, tf.concat([[group], tf.ones([tf.rank(t) - 1], tf.int32)], 0))


def settled_examples(group: tf.Tensor) -> Callable[[tf.Tensor], tf.Tensor]:
    """For a run on `group` stacked copies of the same examples (target-major rows): row flags → per row, whether
    any copy of its example is flagged (fooled): a run may drop those rows, the example's outcome being settled."""

    def settled(flags: tf.Tensor) -> tf.Tensor:
        return tf.tile(tf.reduce_any(tf.reshape(flags, [group, -1]), axis=0), [group])

    return settled


def each_target(
    run_group: Callable[[Take, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]],
    model_fn: Callable[[tf.Tensor], tf.Tensor],
    x: tf.Tensor,
    labels: tf.Tensor,
    *,
    count: int,
    seed: tf.Tensor,
    rows: int | None = None,
) -> tf.Tensor:
    """One run per target class, each on the examples no earlier run fooled; several targets in one run (`rows`).

    Args:
      run_group: (take, target labels [g, M] of the taken examples, stateless seeds [g, 2] of those targets) →
        (adversarial images [g·M, ...], fooled bool [g·M]): the runs of g targets on the M taken examples, stacked
        target-major (g = 1 on the plain path).
      model_fn: images → logits; its clean logits rank the targets.
      x: clean images [N, ...]; labels: int [N].
      count: how many target classes (the top `count` non-true classes by clean logit, in that order).
      seed: int [2]; target k's run gets its k-th fold.
      rows: while M examples stand, run g = ⌊rows / M⌋ targets together (at least one); None, or a static batch
        dimension (`compacts`): one target per run, the plain path.

    Returns:
      Per example: the first adversarial point found; else the last run's point; clean mistakes stay clean.
    """
    labels = tf.cast(labels, tf.int64)
    clean_logits = model_fn(x)
    check_target_count(count, tf.compat.dimension_value(clean_logits.shape[-1]))
    targets = top_other_classes(clean_logits, labels, count)
    fooled = tf.argmax(clean_logits, axis=-1) != labels
    seed = tf.cast(seed, tf.int64)
    stacks = rows is not None and compacts(x)

    def body(k, fooled, x_out):
        group = tf.constant(1)
        if stacks:
            standing = tf.reduce_sum(tf.cast(~fooled, tf.int32))
            group = tf.clip_by_value(rows // tf.maximum(standing, 1), 1, count - k)
        ks = k + tf.range(group)
        seeds = tf.map_fn(
            lambda j: tf.random.experimental.stateless_fold_in(seed, tf.cast(j, tf.int64)),
            ks,
            fn_output_signature=tf.TensorSpec([2], tf.int64),
        )

        def run(take):
            x_run, fooled_run = run_group(take, tf.transpose(take(tf.gather(targets, ks, axis=1))), seeds)
            return _first_fooled(x_run, fooled_run, group) if stacks else (x_run, fooled_run)

        x_out, fooled = on_survivors(run, ~fooled, x_out, fooled)
        return k + group, fooled, x_out

    _, _, x_out = tf.while_loop(
        lambda k, fooled, _: (k < count) & tf.reduce_any(~fooled), body, (tf.constant(0), fooled, x)
    )
    return tf.stop_gradient(x_out)


def _first_fooled(x_run: tf.Tensor, fooled_run: tf.Tensor, group: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per example of `group` stacked runs (target-major rows): the point of the first run that fooled it, else the
    last run's; and whether any run did."""
    fooled = tf.reshape(fooled_run, [group, -1])  # [g, M]
    any_fooled = tf.reduce_any(fooled, axis=0)
    index = tf.range(group)[:, None] + tf.zeros_like(fooled, tf.int32)
    # The first run that fooled the example (group: none did, so the last run's point).
    chosen = tf.minimum(tf.reduce_min(tf.where(fooled, index, group), axis=0), group - 1)
    m = tf.shape(fooled)[1]
    return tf.gather(x_run, chosen * m + tf.range(m)), any_fooled
