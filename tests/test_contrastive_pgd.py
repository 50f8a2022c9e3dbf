"""Contrastive PGD (attacks/contrastive_pgd.py): ascends NT-Xent, stays in the ε-ball and [0, 1], in every context."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advss_tf.attacks.contrastive_pgd import EPSILON, STEP_SIZE, STEPS, contrastive_pgd
from advss_tf.attacks.nt_xent import nt_xent

SEED = tf.constant([5, 1], tf.int64)


def _embedder(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(6, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(8),
        ]
    )


def _views(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (n, 8, 8, 3)).astype(np.float32)
    x[:2] = np.round(x[:2])  # pixels at 0 and 1, where the ball reaches outside [0, 1]
    return x, np.clip(x + rng.normal(0.0, 0.05, x.shape), 0.0, 1.0).astype(np.float32)


def _loss(model, a, b):
    return float(nt_xent(model(a, training=False), model(b, training=False)))


def _assert_in_ball(adv, x, eps=EPSILON):
    adv = np.asarray(adv)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert np.abs(adv - x).max() <= eps + 1e-6


def test_raises_the_loss_and_stays_in_the_ball():
    model = _embedder()
    x1, x2 = _views()
    a1, a2 = contrastive_pgd(lambda x: model(x, training=False), x1, x2, seed=SEED)
    _assert_in_ball(a1, x1)
    _assert_in_ball(a2, x2)
    assert _loss(model, a1, a2) > _loss(model, x1, x2) + 0.01
    assert np.abs(np.asarray(a1) - x1).max() > 0.5 * EPSILON  # it moved, and both views did
    assert np.abs(np.asarray(a2) - x2).max() > 0.5 * EPSILON
    assert STEPS * STEP_SIZE > EPSILON  # ACL's budget reaches the ball's edge


def test_more_steps_ascend_further_and_the_start_is_seeded():
    model = _embedder(1)
    x1, x2 = _views(seed=1)
    fn = lambda x: model(x, training=False)  # noqa: E731
    one = contrastive_pgd(fn, x1, x2, steps=1, random_start=False, eps=0.1, step_size=0.01)
    ten = contrastive_pgd(fn, x1, x2, steps=10, random_start=False, eps=0.1, step_size=0.01)
    assert _loss(model, *ten) > _loss(model, *one) > _loss(model, x1, x2)
    a, b = contrastive_pgd(fn, x1, x2, seed=SEED), contrastive_pgd(fn, x1, x2, seed=SEED)
    np.testing.assert_array_equal(a[0], b[0])
    c = contrastive_pgd(fn, x1, x2, seed=tf.constant([5, 2], tf.int64))
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="needs a seed"):
        contrastive_pgd(fn, x1, x2)


def test_runs_traced_and_in_a_replica_step(mirrored_strategy):
    x1, x2 = _views()
    with mirrored_strategy.scope():
        model = _embedder(2)
    fn = lambda x: model(x, training=False)  # noqa: E731

    def replica_step():
        rows = tf.range(4) + 4 * tf.distribute.get_replica_context().replica_id_in_sync_group
        # Two steps: under MirroredStrategy the steps are unrolled (the gather cannot sit in a while_loop).
        return contrastive_pgd(fn, tf.gather(x1, rows), tf.gather(x2, rows), seed=SEED, steps=2, step_size=EPSILON / 2)

    per_replica = tf.function(lambda: mirrored_strategy.run(replica_step))()
    a1, a2 = (np.concatenate([t.numpy() for t in mirrored_strategy.experimental_local_results(v)]) for v in per_replica)
    _assert_in_ball(a1, x1)
    _assert_in_ball(a2, x2)
    assert _loss(model, a1, a2) > _loss(model, x1, x2) + 0.01
    traced = tf.function(lambda a, b: contrastive_pgd(fn, a, b, seed=SEED))(x1, x2)
    np.testing.assert_allclose(traced[0].numpy(), contrastive_pgd(fn, x1, x2, seed=SEED)[0].numpy(), atol=1e-6)
