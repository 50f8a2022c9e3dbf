"""L∞ PGD: constraints, strength on an undefended model, and the contexts it must run in."""

import numpy as np
import tensorflow as tf

from advss_tf.attacks.pgd import cross_entropy, fgsm, pgd_linf

EPS, STEP = 8 / 255, 2 / 255
SEED = tf.constant([7, 1], tf.int64)


def _acc(model, x, y):
    return float(np.mean(np.argmax(model(x, training=False), -1) == y))


def test_pgd_stays_in_the_ball_and_the_image_range(trained_classifier):
    model, x, y = trained_classifier
    x, y = x[:64], y[:64]
    adv = pgd_linf(lambda z: model(z, training=False), x, y, eps=EPS, step_size=STEP, steps=5, seed=SEED)
    assert float(tf.reduce_max(tf.abs(adv - x))) <= EPS + 1e-6
    assert float(tf.reduce_min(adv)) >= 0.0 and float(tf.reduce_max(adv)) <= 1.0


def test_pgd20_breaks_an_undefended_model_and_beats_fgsm(trained_classifier):
    model, x, y = trained_classifier
    fn = lambda z: model(z, training=False)  # noqa: E731
    assert _acc(model, x, y) >= 0.9
    adv = pgd_linf(fn, x, y, eps=EPS, step_size=STEP, steps=20, seed=SEED)
    assert _acc(model, adv, y) <= 0.05
    x_fgsm = fgsm(fn, x, y, eps=EPS)
    clean_loss = float(tf.reduce_mean(cross_entropy(y, fn(x))))
    fgsm_loss = float(tf.reduce_mean(cross_entropy(y, fn(x_fgsm))))
    pgd_loss = float(tf.reduce_mean(cross_entropy(y, fn(adv))))
    assert pgd_loss >= fgsm_loss >= clean_loss


def test_pgd_is_deterministic_and_runs_in_tf_function_and_replica_step(trained_classifier, mirrored_strategy):
    model, x, y = trained_classifier
    x, y = x[:16], y[:16]
    fn = lambda z: model(z, training=False)  # noqa: E731
    eager = pgd_linf(fn, x, y, eps=EPS, step_size=STEP, steps=3, seed=SEED)
    graph = tf.function(lambda a, b: pgd_linf(fn, a, b, eps=EPS, step_size=STEP, steps=3, seed=SEED))(x, y)
    np.testing.assert_allclose(eager, graph, atol=1e-6)

    strategy = mirrored_strategy
    ds = tf.data.Dataset.from_tensors((x, y))
    batch = next(iter(strategy.experimental_distribute_dataset(ds)))

    @tf.function
    def run(b):
        return strategy.run(lambda a, c: pgd_linf(fn, a, c, eps=EPS, step_size=STEP, steps=3, seed=SEED), args=b)

    out = tf.concat(strategy.experimental_local_results(run(batch)), 0)
    assert out.shape == x.shape and float(tf.reduce_max(tf.abs(out - x))) <= EPS + 1e-6


def test_a_model_without_input_gradients_is_attacked_with_zero_gradients(trained_classifier):
    model, x, y = trained_classifier
    x, y = x[:8], y[:8]
    masked = lambda z: model(tf.stop_gradient(z), training=False)  # noqa: E731
    np.testing.assert_array_equal(fgsm(masked, x, y, eps=EPS), x)  # no gradient: the sign step moves nothing
    start = pgd_linf(masked, x, y, eps=EPS, step_size=STEP, steps=1, seed=SEED)  # the random start, unmoved
    np.testing.assert_array_equal(pgd_linf(masked, x, y, eps=EPS, step_size=STEP, steps=5, seed=SEED), start)
