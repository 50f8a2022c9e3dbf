"""AutoAttack's components beyond APGD-CE: APGD-T, FAB-T and Square (guarantees, strength, their parts)."""

import dataclasses
import functools

import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf

from advss_tf.attacks import apgd, fab, losses, registry, square, targets

SEED = tf.constant([7, 11], tf.int64)
NEW_ATTACKS = ("apgd_t", "fab_t", "square")
N_STRENGTH = 128  # of the fixture's 256 images: 2 % is 2.56 images
# Cheap versions for the guarantee tests: few iterations and targets, so a test takes seconds.
CHEAP = {"apgd_t": dict(steps=5, targets=3), "fab_t": dict(steps=5, targets=3), "square": dict(steps=30)}
_SIGNATURE = [tf.TensorSpec([None, 32, 32, 3]), tf.TensorSpec([None], tf.int64), tf.TensorSpec([2], tf.int64)]


def _model_fn(model):
    return lambda z: model(z, training=False)


def _accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model(x, training=False), -1) == y))


def _traced(spec, model_fn, signature=None):
    return tf.function(lambda a, b, s: spec(model_fn, a, b, s), input_signature=signature)


@pytest.fixture(scope="module")
def strength_images(trained_classifier):
    model, x, y = trained_classifier
    return model, x[:N_STRENGTH], y[:N_STRENGTH].astype(np.int64)


@pytest.mark.parametrize("name", NEW_ATTACKS)
def test_guarantees_budget_range_gradient_stop_determinism_and_both_batch_paths(trained_classifier, name):
    model, x, y = trained_classifier
    x, y = x[:12], y[:12].astype(np.int64)
    spec = dataclasses.replace(registry.ATTACKS[name], **CHEAP[name])
    model_fn = _model_fn(model)
    # None batch: the attack runs on the survivors only (gathered); static batch: on all, fooled ones untouched.
    dynamic = _traced(spec, model_fn, _SIGNATURE)
    a, b, c = (dynamic(x, y, s).numpy() for s in (SEED, SEED, SEED + 1))
    np.testing.assert_array_equal(a, b)
    xt = tf.constant(x)
    static = _traced(spec, model_fn)(xt, tf.constant(y), SEED).numpy()
    with tf.GradientTape() as tape:
        tape.watch(xt)
        eager = spec(model_fn, xt, tf.constant(y), SEED)
    assert tape.gradient(tf.reduce_sum(eager), xt) is None
    # The batch paths and eager mode run other kernels (batch size, grappler fusion), so their gradients differ in
    # the last bits, and where a component is near zero APGD's sign step or FAB's projection takes another path:
    # the points are not comparable value by value on every CPU. Each path must be valid and break the model on
    # about the same examples: where a path parts it changes at most that example's outcome (3 of 12 allowed),
    # while a path that did not attack would differ on every example the others break.
    predicted = [np.argmax(model_fn(v), -1) for v in (a, static, eager.numpy())]
    for other, pred in zip((static, eager.numpy()), predicted[1:], strict=True):
        assert np.abs(other - x).max() <= spec.eps + 1e-6 and other.min() >= 0.0 and other.max() <= 1.0
        assert ((pred != y) != (predicted[0] != y)).sum() <= 3
    if name != "fab_t":  # FAB starts from the clean image and draws nothing
        assert np.abs(a - c).max() > 0
    norms = registry.perturbation_norm(a, x, "linf").numpy()
    assert norms.max() <= spec.eps + 1e-6 and a.min() >= 0.0 and a.max() <= 1.0
    assert norms.max() > 0.1 * spec.eps  # it moved: a no-op would pass the bound too


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_ATTACKS)
def test_each_attack_breaks_the_undefended_model(strength_images, name):
    model, x, y = strength_images
    assert _accuracy(model, x, y) >= 0.9
    spec = registry.ATTACKS[name]
    x_adv = _traced(spec, _model_fn(model), _SIGNATURE)(x, y, SEED)
    assert _accuracy(model, x_adv, y) <= 0.02


def test_square_needs_no_gradient(strength_images):
    model, x, y = strength_images
    x, y = x[:64], y[:64]
    # Zero gradients everywhere: gradient attacks are blind here, the model's outputs are untouched.
    blind = lambda z: tf.stop_gradient(model(z, training=False))  # noqa: E731
    # 1,000 queries (a fifth of the standard budget) on the schedule rescaled to them: this test is about needing
    # no gradient; at a cut budget the unrescaled schedule would keep the windows large.
    square_1000 = functools.partial(square.square, norm="linf", rescale_schedule=True)
    spec = dataclasses.replace(registry.ATTACKS["square"], steps=1000, fn=square_1000)
    x_adv = _traced(spec, blind, _SIGNATURE)(x, y, SEED)
    assert _accuracy(model, x_adv, y) <= 0.05
    apgd_adv = _traced(dataclasses.replace(registry.ATTACKS["apgd_ce"], steps=10), blind, _SIGNATURE)(x, y, SEED)
    assert _accuracy(model, apgd_adv, y) >= 0.5  # the contrast: APGD only moves to its random start


def test_fab_finds_smaller_perturbations_than_pgd(strength_images):
    model, x, y = strength_images
    x, y = x[:64], y[:64]
    model_fn = _model_fn(model)
    fab_adv = _traced(dataclasses.replace(registry.ATTACKS["fab_t"], steps=30, targets=2), model_fn, _SIGNATURE)
    pgd_adv = _traced(registry.ATTACKS["pgd20"], model_fn, _SIGNATURE)
    fab_x, pgd_x = fab_adv(x, y, SEED).numpy(), pgd_adv(x, y, SEED).numpy()
    fab_fooled = np.argmax(model_fn(fab_x), -1) != y
    pgd_fooled = np.argmax(model_fn(pgd_x), -1) != y
    both = fab_fooled & pgd_fooled
    assert both.mean() >= 0.9
    fab_norm = registry.perturbation_norm(fab_x, x, "linf").numpy()[both]
    pgd_norm = registry.perturbation_norm(pgd_x, x, "linf").numpy()[both]
    # PGD walks to the ε-ball's surface; FAB stops near the boundary.
    assert np.median(fab_norm) < 0.5 * np.median(pgd_norm)
    assert (fab_norm <= pgd_norm + 1e-6).mean() >= 0.9


def _least_multiplier_by_sorting(slope, kink, c):
    """The textbook solution in float64 NumPy: g at every sorted kink from cumulative sums, linear between."""
    order = np.argsort(kink, kind="stable")
    k, s = kink[order], slope[order]
    below = np.cumsum(s)
    g = np.cumsum(s * k) + k * (below[-1] - below)  # g at each kink
    first = int(np.sum(g < c))
    if first == len(k):
        return np.inf
    lam0, g0, free = (0.0, 0.0, below[-1]) if first == 0 else (k[first - 1], g[first - 1], below[-1] - below[first - 1])
    return lam0 + (c - g0) / max(free, 1e-12)


def test_the_projections_multiplier_is_the_piecewise_linear_root():
    """FAB's Lagrange multiplier (Newton steps, no sort) is the least λ with Σ slope·min(λ, kink) = c, as sorting the
    kinks gives it: in float64 to 1e-12 on small rows with the edge cases (c = 0, zero slopes, tied kinks, kinks at
    0, a root just below the last kink, out of reach); in float32 on FAB's 3,072-wide rows, near float64's root."""
    rng = np.random.default_rng(3)
    rows = []
    for case in range(200):
        d = int(rng.integers(1, 12))
        slope = np.abs(rng.normal(size=d)) * (rng.uniform(size=d) > 0.2)
        kink = rng.uniform(0, 1, d)
        if case % 5 == 1:
            kink[: d // 2] = kink[0]  # ties
        if case % 7 == 2:
            kink[0] = 0.0  # a coordinate already at its bound
        top = float(np.sum(slope * kink))
        # zero, inside, just below the last kink (exactly at it, rounding decides), beyond reach
        c = [0.0, rng.uniform(0, top), top * (1 - 1e-9), top * 1.5 + 1.0][case % 4]
        rows.append((slope, kink, c))
    for slope, kink, c in rows:
        got = fab._least_multiplier(tf.constant(slope[None]), tf.constant(kink[None]), tf.constant([c], tf.float64))
        got = got.numpy()[0]
        want = _least_multiplier_by_sorting(slope, kink, c)
        if np.isinf(want):
            assert np.isinf(got), (slope, kink, c, got)
        else:  # the least root: where g is flat at c (zero slopes), any λ there gives the same step
            g = lambda lam, slope=slope, kink=kink: np.sum(slope * np.minimum(lam, kink))  # noqa: E731
            np.testing.assert_allclose(g(got), c, rtol=1e-12, atol=1e-12)
            assert got <= want + 1e-12, (got, want)
    slope = np.abs(rng.normal(size=(32, 3072)))
    kink = rng.uniform(0, 1, (32, 3072))
    c = rng.uniform(0, 1, 32) * np.sum(slope * kink, axis=1) * np.r_[np.full(16, 0.01), np.ones(16)]
    got = fab._least_multiplier(*(tf.constant(v, tf.float32) for v in (slope, kink, c))).numpy()
    want = np.array([_least_multiplier_by_sorting(*r) for r in zip(slope, kink, c)])
    np.testing.assert_allclose(got, want, rtol=2e-6)


def test_linf_projection_is_the_linear_programs_solution():
    rng = np.random.default_rng(0)
    dim = 12
    for case in range(6):
        t = rng.uniform(0, 1, dim)
        w = rng.normal(size=dim)
        w[:2] = 0.0
        # Case 0: beyond the box's reach (it can change w·t by at most Σ|w_i|); the others are reachable or not.
        b = w @ t - (np.abs(w).sum() + 1.0) if case == 0 else w @ t + 0.5 * rng.normal()
        d = fab.project_linf(tf.constant(t[None], tf.float64), tf.constant(w[None]), tf.constant([b])).numpy()[0]
        assert np.all(t + d >= -1e-9) and np.all(t + d <= 1 + 1e-9)
        # min λ over (d, λ): w·d = b − w·t, −λ ≤ d ≤ λ, −t ≤ d ≤ 1 − t.
        cost = np.r_[np.zeros(dim), 1.0]
        a_ub = np.block([[np.eye(dim), -np.ones((dim, 1))], [-np.eye(dim), -np.ones((dim, 1))]])
        bounds = [(-ti, 1 - ti) for ti in t] + [(0, None)]
        lp = scipy.optimize.linprog(
            cost, A_ub=a_ub, b_ub=np.zeros(2 * dim), A_eq=np.r_[w, 0.0][None], b_eq=[b - w @ t], bounds=bounds
        )
        if lp.status == 0:
            np.testing.assert_allclose(w @ (t + d), b, atol=1e-9)
            np.testing.assert_allclose(np.abs(d).max(), lp.x[-1], atol=1e-9)
        else:  # out of the box's reach: the corner that gets closest to the hyperplane
            corner = np.where(w < 0, 1.0, 0.0) if w @ t > b else np.where(w > 0, 1.0, 0.0)
            np.testing.assert_allclose((t + d)[w != 0], corner[w != 0], atol=1e-12)
        np.testing.assert_array_equal(d[:2], 0.0)
        assert case > 0 or lp.status == 2  # case 0 was infeasible


def test_targeted_dlr_and_the_target_order():
    logits = tf.constant([[5.0, 1.0, 3.0, 0.0, 2.0], [0.0, 4.0, 1.0, 3.0, 2.0]])
    labels = tf.constant([0, 1])
    np.testing.assert_array_equal(targets.top_other_classes(logits, labels, 3).numpy(), [[2, 4, 1], [3, 4, 2]])
    value = losses.dlr_targeted(labels, tf.constant([2, 3]), logits).numpy()
    # −(z_y − z_t) / (z_π1 − (z_π3 + z_π4) / 2)
    np.testing.assert_allclose(value, [-(5 - 3) / (5 - (2 + 1) / 2), -(4 - 3) / (4 - (2 + 1) / 2)], rtol=1e-6)
    shifted = losses.dlr_targeted(labels, tf.constant([2, 3]), 3.0 * logits + 7.0).numpy()
    np.testing.assert_allclose(shifted, value, rtol=1e-5)
    with pytest.raises(ValueError, match="target classes"):
        targets.check_target_count(10, 10)


def test_square_p_schedule_is_autoattacks_unrescaled_one_and_the_rescaled_one_is_optional():
    init = square.P_INIT
    at = (0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 2001, 4000, 4001, 4999)
    halvings = (0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7)
    expected = [init / 2**k for k in halvings]
    # AutoAttack's standard version: the schedule as it is, whatever the budget (5,000 queries: last halving after
    # iteration 4,000, so p never goes below 0.8/128 within the budget).
    for queries in (5000, 10_000, 100):
        np.testing.assert_allclose([float(square.p_schedule(i, queries)) for i in at], expected, rtol=1e-6)
    assert float(square.p_schedule(9999, 10_000)) == pytest.approx(init / 512)
    # The standalone SquareAttack's rescaled schedule: iteration i of 5,000 counts as 2i.
    assert float(square.p_schedule(5, 5000, rescale=True)) == pytest.approx(init)
    assert float(square.p_schedule(6, 5000, rescale=True)) == pytest.approx(init / 2)
    assert float(square.p_schedule(4001, 5000, rescale=True)) == pytest.approx(init / 512)
    assert float(square.p_schedule(4001, 5000)) == pytest.approx(init / 128)


def test_square_window_follows_the_unrescaled_schedule_by_default():
    """The window Square proposes at iteration 11 of a 20-query run: the unrescaled schedule has halved p once
    (side round(√(0.4·1024)) = 20), the rescaled one 7 times (iteration 5,500 of 10,000: side 3)."""
    x = np.full([1, 32, 32, 3], 0.5, np.float32)
    seen = []

    def model_fn(z):
        # The true class always wins by the same margin: no proposal is kept, the best point stays the start.
        seen.append(z.numpy()[0])
        return tf.one_hot([0], 10) * 100.0 + 0.0 * tf.reduce_sum(z)

    for rescale in (False, True):
        seen.clear()
        square.square(model_fn, x, np.array([0]), eps=0.01, steps=20, seed=SEED, rescale_schedule=rescale)
        assert len(seen) == 21  # the start, then one query per iteration
        # Iteration 11's proposal (call 12) differs from the start inside its window: every row of it (a column
        # may keep its stripe's sign in every channel).
        moved = np.any(seen[12] != seen[0], axis=-1)
        side = max(len(np.flatnonzero(moved.any(1))), len(np.flatnonzero(moved.any(0))))
        assert side == (3 if rescale else 20), (rescale, side)


def test_registry_records_the_standard_versions_settings():
    rows = {n: registry.ATTACKS[n].to_dict() for n in NEW_ATTACKS}
    assert (
        rows["apgd_t"]["targets"] == 9 and rows["apgd_t"]["steps"] == 100 and rows["apgd_t"]["loss"] == "dlr_targeted"
    )
    assert rows["fab_t"]["targets"] == 9 and rows["fab_t"]["steps"] == 100 and not rows["fab_t"]["random_start"]
    assert rows["square"]["steps"] == 5000 and rows["square"]["targets"] is None
    assert all(r["epsilon_label"] == "8/255" for r in rows.values())
    assert registry.ATTACKS["apgd_t"].with_budget(4 / 255).step_size == pytest.approx(8 / 255)


FAST_PATH_ATTACKS = {
    "apgd_ce": functools.partial(apgd.apgd, steps=20),
    "apgd_t": functools.partial(apgd.apgd_targeted, steps=20, targets=3),
    "fab_t": functools.partial(fab.fab_targeted, steps=20, targets=3),
}


@pytest.mark.parametrize("name", FAST_PATH_ATTACKS)
def test_the_fast_path_has_the_plain_paths_outcomes_with_less_work(trained_classifier, name):
    """`fast=True` (the default: fooled examples stop, the targets of few survivors run stacked) and `fast=False`
    (every example runs every target to the end, one target after another) leave the same examples robust, each
    checked in the same traced call as the evaluator does; the fast path runs fewer image-forwards."""
    model, x, y = trained_classifier
    x, y = x[:24], y[:24].astype(np.int64)
    forwards = tf.Variable(0, dtype=tf.int64)

    def counted(z):
        forwards.assign_add(tf.cast(tf.shape(z)[0], tf.int64))
        return model(z, training=False)

    outcomes, work = {}, {}
    for fast in (False, True):

        @tf.function(input_signature=_SIGNATURE[:2])
        def attack(a, b, fast=fast):
            x_adv = FAST_PATH_ATTACKS[name](counted, a, b, eps=0.5 / 255, seed=SEED, fast=fast)
            return tf.argmax(model(x_adv, training=False), -1) == b, x_adv

        forwards.assign(0)
        robust, x_adv = attack(x, y)
        outcomes[fast], work[fast] = robust.numpy(), int(forwards.numpy())
        assert registry.perturbation_norm(x_adv, x, "linf").numpy().max() <= 0.5 / 255 + 1e-6
    # Informative: the attack breaks some examples and leaves others.
    assert 0 < outcomes[False].sum() < len(y), outcomes[False]
    np.testing.assert_array_equal(outcomes[True], outcomes[False])
    assert work[True] < work[False], work
