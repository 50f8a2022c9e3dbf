"""L2 AutoAttack: its components (APGD-CE, APGD-T, FAB-T, Square in L2), the L2 projection FAB uses, the chain's
registration and honesty checks, and the evaluate binary with --autoattack_norm=l2."""

import dataclasses
import json
import os

import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf
from binaries import run_binary

from advss_tf.attacks import fab, registry, square
from advss_tf.errors import UsageError
from advss_tf.evaluation import robustness, worst_case

SEED = tf.constant([7, 11], tf.int64)
EPS = 0.5
L2_ATTACKS = ("apgd_ce_l2", "apgd_t_l2", "fab_t_l2", "square_l2")
N_STRENGTH = 64  # of the fixture's 256 images: 2 % is 1.28 images, so at most one may survive
GRADIENT_ATTACKS = L2_ATTACKS[:3]
# The smallest budgets that still bring the undefended model to <= 2 % (the standard version's are in the registry).
# Square L2 needs thousands of queries on this model at ε = 0.5 (see test_square_l2_breaks_the_undefended_model).
CHEAP = {
    "apgd_ce_l2": dict(steps=10),
    "apgd_t_l2": dict(steps=10, targets=2),
    "fab_t_l2": dict(steps=10, targets=2),
    "square_l2": dict(steps=40),
}
_SIGNATURE = [tf.TensorSpec([None, 32, 32, 3]), tf.TensorSpec([None], tf.int64), tf.TensorSpec([2], tf.int64)]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_fn(model):
    return lambda z: model(z, training=False)


def _accuracy(model_fn, x, y) -> float:
    return float(np.mean(np.argmax(model_fn(x), -1) == y))


def _traced(name, model_fn, **budget):
    spec = dataclasses.replace(registry.ATTACKS[name], **(budget or CHEAP[name]))
    return tf.function(lambda a, b, s: spec(model_fn, a, b, s), input_signature=_SIGNATURE)


@pytest.fixture(scope="module")
def strength_images(trained_classifier):
    model, x, y = trained_classifier
    return _model_fn(model), x[:N_STRENGTH], y[:N_STRENGTH].astype(np.int64)


@pytest.fixture(scope="module")
def gradient_attack_points(strength_images):
    """Each L2 gradient attack's points on the strength images, from SEED twice (for the determinism check)."""
    model_fn, x, y = strength_images
    points = {}
    for name in GRADIENT_ATTACKS:
        attack = _traced(name, model_fn)
        points[name] = attack(x, y, SEED).numpy(), attack(x, y, SEED).numpy()
    return points


def _check_guarantees(x_adv, x):
    norms = registry.perturbation_norm(x_adv, x, "l2").numpy()
    assert norms.max() <= EPS + 1e-5 and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert norms.max() > 0.1 * EPS  # it moved: a no-op would pass the bound too


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_each_l2_gradient_attack_stays_in_the_ball_is_deterministic_and_breaks_the_undefended_model(
    strength_images, gradient_attack_points, name
):
    model_fn, x, y = strength_images
    assert _accuracy(model_fn, x, y) >= 0.9
    spec = registry.ATTACKS[name]
    assert spec.norm == "l2" and spec.eps == EPS
    x_adv, again = gradient_attack_points[name]
    np.testing.assert_array_equal(x_adv, again)
    _check_guarantees(x_adv, x)
    assert _accuracy(model_fn, x_adv, y) <= 0.02


def test_square_l2_stays_in_the_ball_is_deterministic_needs_no_gradient_and_lowers_the_margin(strength_images):
    model_fn, x, y = strength_images
    x, y = x[:16], y[:16]
    blind = lambda z: tf.stop_gradient(model_fn(z))  # noqa: E731
    attack = _traced("square_l2", blind)
    x_adv, again, other = (attack(x, y, s).numpy() for s in (SEED, SEED, SEED + 1))
    np.testing.assert_array_equal(x_adv, again)
    assert np.abs(x_adv - other).max() > 0
    _check_guarantees(x_adv, x)
    margins = [square.margin(y, model_fn(v)).numpy() for v in (x, x_adv)]
    assert np.mean(margins[1]) < np.mean(margins[0]) - 1.0  # 40 queries already take a good part of the margin
    xt = tf.constant(x[:4])
    with tf.GradientTape() as tape:
        tape.watch(xt)
        eager = registry.ATTACKS["square_l2"].fn(model_fn, xt, tf.constant(y[:4]), eps=EPS, steps=3, seed=SEED)
    assert tape.gradient(tf.reduce_sum(eager), xt) is None


def test_fab_l2_finds_smaller_perturbations_than_apgd(strength_images, gradient_attack_points):
    model_fn, x, y = strength_images
    fab_x, apgd_x = gradient_attack_points["fab_t_l2"][0], gradient_attack_points["apgd_ce_l2"][0]
    both = (np.argmax(model_fn(fab_x), -1) != y) & (np.argmax(model_fn(apgd_x), -1) != y)
    assert both.mean() >= 0.9
    fab_norm, apgd_norm = (registry.perturbation_norm(p, x, "l2").numpy()[both] for p in (fab_x, apgd_x))
    # APGD ends on the ball's surface; FAB stops near the boundary.
    assert np.median(fab_norm) < 0.5 * np.median(apgd_norm)


def _feasible_directions(t, d, w, rng, count):
    """Random steps r with ⟨w, r⟩ = 0 that keep t + d + s·r in the box for small s > 0 (the feasible cone)."""
    point = t + d
    at_low, at_high = point <= 1e-12, point >= 1 - 1e-12
    for _ in range(count):
        r = rng.normal(size=len(t))
        r[at_low] = np.abs(r[at_low])  # a coordinate at a bound may only move inwards
        r[at_high] = -np.abs(r[at_high])
        free = ~(at_low | at_high) & (w != 0)
        if not free.any():
            continue
        # Restore ⟨w, r⟩ = 0 with the free coordinates only.
        r[free] -= w[free] * (w @ r) / (w[free] @ w[free])
        yield r


def test_l2_projection_is_the_exact_least_norm_step_onto_the_hyperplane_in_the_box():
    rng = np.random.default_rng(0)
    dim = 12
    for case in range(10):
        t = rng.uniform(0, 1, dim)
        t[2] = 0.0 if case % 2 else 1.0  # a coordinate on the box's boundary
        w = rng.normal(size=dim)
        w[:2] = 0.0
        # Case 0: beyond the box's reach (it can change w·t by at most Σ|w_i|); the others are reachable.
        b = w @ t - (np.abs(w).sum() + 1.0) if case == 0 else w @ t + 0.6 * rng.normal()
        d = fab.project_l2(tf.constant(t[None]), tf.constant(w[None]), tf.constant([b])).numpy()[0]
        assert np.all(t + d >= -1e-12) and np.all(t + d <= 1 + 1e-12)
        np.testing.assert_array_equal(d[:2], 0.0)
        if case == 0:  # out of reach: the corner that gets closest to the hyperplane
            corner = np.where(w < 0, 1.0, 0.0) if w @ t > b else np.where(w > 0, 1.0, 0.0)
            np.testing.assert_allclose((t + d)[w != 0], corner[w != 0], atol=1e-12)
            continue
        np.testing.assert_allclose(w @ (t + d), b, atol=1e-9)
        # A general solver finds no shorter step ...
        qp = scipy.optimize.minimize(
            lambda v: v @ v,
            np.zeros(dim),
            jac=lambda v: 2 * v,
            method="SLSQP",
            bounds=[(-ti, 1 - ti) for ti in t],
            constraints=[{"type": "eq", "fun": lambda v, w=w, t=t, b=b: w @ (t + v) - b, "jac": lambda v, w=w: w}],
            options=dict(ftol=1e-15, maxiter=500),
        )
        assert qp.success
        np.testing.assert_allclose(np.linalg.norm(d), np.linalg.norm(qp.x), rtol=1e-6)
        # ... and neither does a random search along the feasible directions around ours.
        for r in _feasible_directions(t, d, w, rng, 200):
            for s in (1e-3, 1e-2):
                other = d + s * r
                if np.all(t + other >= 0) and np.all(t + other <= 1):
                    assert np.linalg.norm(other) >= np.linalg.norm(d) - 1e-12
    # In float32 as FAB runs it, on a batch: every row on its hyperplane.
    t = rng.uniform(0, 1, (16, 3072)).astype(np.float32)
    w = rng.normal(size=(16, 3072)).astype(np.float32)
    b = np.einsum("ij,ij->i", w, t) + rng.normal(size=16).astype(np.float32)
    d = fab.project_l2(tf.constant(t), tf.constant(w), tf.constant(b)).numpy()
    assert np.all(t + d >= 0) and np.all(t + d <= 1)
    np.testing.assert_allclose(np.einsum("ij,ij->i", w, t + d), b, atol=1e-3)


def _rings_by_squares(rows: int, cols: int) -> np.ndarray:
    """η^(r, s) as the paper builds it: concentric squares of side 2k+1 around the centre, each adding 1/(k+1)²."""
    out = np.zeros((rows, cols))
    cr, cc = rows // 2, cols // 2
    for k in range(max(rows, cols) // 2 + 1):
        out[max(cr - k, 0) : cr + k + 1, max(cc - k, 0) : cc + k + 1] += 1.0 / (k + 1) ** 2
    return out / np.linalg.norm(out)


@pytest.mark.parametrize("side", [3, 5, 7, 29])
def test_square_l2_window_is_the_meta_pseudo_gaussian(side):
    half = side // 2
    expected = np.concatenate([_rings_by_squares(half, side), -_rings_by_squares(side - half, side)])
    expected /= np.linalg.norm(expected)
    size = 32
    top, left = tf.constant([1, size - side]), tf.constant([size - side, 0])
    pattern = square.pseudo_gaussian(top, left, side, tf.constant([False, True]), size, size, tf.float64).numpy()
    np.testing.assert_allclose(pattern[0, 1 : 1 + side, size - side :, 0], expected, atol=1e-12)
    np.testing.assert_allclose(pattern[1, size - side :, :side, 0], expected.T, atol=1e-12)
    for k, (r, c) in enumerate([(1, size - side), (size - side, 0)]):
        outside = pattern[k, :, :, 0].copy()
        outside[r : r + side, c : c + side] = 0.0
        assert not outside.any()
    np.testing.assert_allclose(np.sum(pattern**2, axis=(1, 2, 3)), 1.0, atol=1e-12)


def test_square_l2_start_uses_the_whole_budget_and_each_query_keeps_it():
    x = tf.fill([3, 32, 32, 3], 0.5)  # far from the box's faces: nothing is clipped
    probe = []

    def model_fn(z):
        probe.append(z)
        return tf.tile(tf.constant([[5.0, 0.0, 0.0]]), [tf.shape(z)[0], 1])  # never fooled: every query runs

    square.square(model_fn, x, tf.zeros([3], tf.int64), eps=EPS, steps=3, seed=SEED, norm="l2")
    norms = [registry.perturbation_norm(z, x, "l2").numpy() for z in probe]
    np.testing.assert_allclose(np.concatenate(norms), EPS, rtol=1e-5)  # the start and every proposal: ‖δ‖₂ = ε


def test_the_l2_chain_is_registered_with_its_budget_and_compared_only_with_l2_attacks():
    assert registry.COMPOSITES["autoattack_l2"] == L2_ATTACKS
    rows = {n: registry.ATTACKS[n].to_dict() for n in L2_ATTACKS}
    assert all(r["norm"] == "l2" and r["epsilon_label"] == "0.5" for r in rows.values())
    assert rows["apgd_t_l2"]["targets"] == rows["fab_t_l2"]["targets"] == 9 and rows["square_l2"]["steps"] == 5000
    specs = registry.configure(L2_ATTACKS, epsilons={"l2": 0.25, "linf": 4 / 255})
    assert all(s.eps == 0.25 for s in specs) and specs[0].step_size == pytest.approx(0.5)  # APGD: 2ε
    assert registry.parse_attacks(["autoattack", "pgd_l2"], autoattack_norm="l2") == ["autoattack_l2", "pgd_l2"]
    assert registry.parse_attacks(["autoattack"]) == ["autoattack"]
    with pytest.raises(UsageError, match="AutoAttack norm"):
        registry.parse_attacks(["autoattack"], autoattack_norm="l1")
    # An L2 AutoAttack far above L∞ PGD-20 is no sign of masking; far above L2 PGD-20 it is.
    assert robustness.masking_flags({"autoattack_l2": 0.60, "pgd20": 0.30, "apgd_ce": 0.30}, 1000) == []
    flags = robustness.masking_flags({"autoattack_l2": 0.60, "pgd_l2": 0.30}, 1000)
    assert [f["check"] for f in flags] == ["autoattack_l2<=pgd_l2"]


def _evaluate(*args: str) -> tuple[int, str]:
    done = run_binary("advss_tf.evaluate", *args, timeout=600)
    return done.returncode, done.stderr


def test_the_binary_runs_l2_autoattack_and_labels_its_norm_and_radius(trained_classifier, tmp_path):
    model, _, _ = trained_classifier
    export = str(tmp_path / "classifier")
    model.export(export, verbose=False)
    out, bad = tmp_path / "eval", tmp_path / "bad"
    small = ["--max_examples=8", "--batch_size=8", "--targets=2", "--square_queries=20", "--quiet"]
    code, err = _evaluate(
        f"--model={export}", f"--output_dir={out}", "--attacks=autoattack,pgd20", "--autoattack_norm=l2", *small
    )
    bad_code, bad_err = _evaluate(
        f"--model={export}", f"--output_dir={bad}", "--attacks=autoattack", "--autoattack_norm=l1"
    )
    assert code == 0, err[-3000:]
    lines = bad_err.strip().splitlines()
    assert bad_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "autoattack_norm" in lines[0]
    assert not bad.exists()
    results = json.loads((out / "results.json").read_text())
    aa = results["robust_accuracy"]["autoattack_l2"]
    assert aa["norm"] == "l2" and aa["epsilon"] == EPS and aa["epsilon_label"] == "0.5"
    assert aa["components"] == list(L2_ATTACKS) and all(s["norm"] == "l2" for s in aa["stages"])
    assert aa["max_perturbation"] <= EPS + 1e-5
    assert "autoattack" not in results["robust_accuracy"] and results["settings"]["autoattack_norm"] == "l2"
    assert aa["accuracy"] <= 0.125  # the undefended model: at most one of 8 survives
    card = json.loads((out / worst_case.MODEL_CARD).read_text())
    assert card["threat_model"] == "L2" and card["eps"] == "0.5"
    # Cut budgets (2 targets, 20 queries) are not the standard version: labelled custom, not on the model card.
    assert aa["version"] == "custom" and "square_l2 queries 20 (standard: 5000)" in aa["changes"]
    assert card["autoattack_acc"] is None and "custom settings" in card["footnote"]
