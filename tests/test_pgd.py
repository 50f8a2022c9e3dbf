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


def _check_valid(adv, x):
    adv = np.asarray(adv)
    assert adv.shape == x.shape
    assert np.abs(adv - x).max() <= EPS + 1e-6 and adv.min() >= 0.0 and adv.max() <= 1.0


def test_pgd_is_deterministic_in_each_mode_and_runs_in_tf_function_and_replica_step(
    trained_classifier, mirrored_strategy
):
    """What PGD promises: the same points for the same seed *in the same mode on the same machine*.

    Eager and traced PGD run different kernels (grappler fuses and reorders ops), so the input gradient differs in
    its last bits; where a component is near zero its sign flips and that pixel's path parts by whole step sizes
    (seen on an AVX2 CPU: 157 of 49,152 values, up to 4 steps). So across modes only what holds on every CPU is
    compared: both stay in the ball and the image range, and both break the model about equally often.
    """
    model, x, y = trained_classifier
    x, y = x[:64], y[:64]
    fn = lambda z: model(z, training=False)  # noqa: E731
    eager = [pgd_linf(fn, x, y, eps=EPS, step_size=STEP, steps=3, seed=SEED).numpy() for _ in range(2)]
    traced = tf.function(lambda a, b: pgd_linf(fn, a, b, eps=EPS, step_size=STEP, steps=3, seed=SEED))
    graph = [traced(x, y).numpy() for _ in range(2)]
    np.testing.assert_array_equal(eager[0], eager[1])  # bitwise within a mode
    np.testing.assert_array_equal(graph[0], graph[1])
    for adv in (eager[0], graph[0]):
        _check_valid(adv, x)
    # Same success up to the examples whose path parted. A flip changes one pixel by 2 step sizes (2/255 here), far
    # less than the 8/255 budget, so it decides an example's outcome only if that example sits at the boundary
    # after 3 steps: a few of 64 at most. 6/64 (~10 %) bounds that with room on any CPU; a broken mode (no
    # gradient, wrong sign, a stale trace) would leave the clean accuracy (>= 90 %) and miss it by far.
    clean = _acc(model, x, y)
    eager_acc, graph_acc = _acc(model, eager[0], y), _acc(model, graph[0], y)
    assert abs(eager_acc - graph_acc) <= 6 / 64
    assert max(eager_acc, graph_acc) < clean - 0.25  # both really attacked

    # In a replica step under MirroredStrategy (each replica attacks its half): valid, and bitwise repeatable.
    strategy = mirrored_strategy
    ds = tf.data.Dataset.from_tensors((x[:16], y[:16]))
    batch = next(iter(strategy.experimental_distribute_dataset(ds)))

    @tf.function
    def run(b):
        return strategy.run(lambda a, c: pgd_linf(fn, a, c, eps=EPS, step_size=STEP, steps=3, seed=SEED), args=b)

    replica = [tf.concat(strategy.experimental_local_results(run(batch)), 0).numpy() for _ in range(2)]
    np.testing.assert_array_equal(replica[0], replica[1])
    _check_valid(replica[0], x[:16])


def test_a_model_without_input_gradients_is_attacked_with_zero_gradients(trained_classifier):
    model, x, y = trained_classifier
    x, y = x[:8], y[:8]
    masked = lambda z: model(tf.stop_gradient(z), training=False)  # noqa: E731
    np.testing.assert_array_equal(fgsm(masked, x, y, eps=EPS), x)  # no gradient: the sign step moves nothing
    start = pgd_linf(masked, x, y, eps=EPS, step_size=STEP, steps=1, seed=SEED)  # the random start, unmoved
    np.testing.assert_array_equal(pgd_linf(masked, x, y, eps=EPS, step_size=STEP, steps=5, seed=SEED), start)
