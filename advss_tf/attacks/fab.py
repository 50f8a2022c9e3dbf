"""FAB-T (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast adaptive boundary attack"),
targeted, L∞ and L2: AutoAttack's third component, a minimum-norm attack that follows the decision boundary.

Written from the paper (Algorithm 1, the projection of Eq. 4) and the reference ``fra31/auto-attack``
``autoattack/fab_pt.py`` / ``fab_base.py``. Per target class t and iteration, with f = z_t − z_y linearised at the
current point x_k (w = ∇f, b = ⟨w, x_k⟩ − f):

- d_k and d_orig: the smallest steps (in the attack's norm) from x_k and from the clean x onto the hyperplane
  {⟨w, ·⟩ = b} inside the box [0, 1]^d (`project_linf`, `project_l2`: one Lagrange multiplier each, found by a
  few Newton steps on a piecewise linear equation);
- α = min(‖d_k‖ / (‖d_k‖ + ‖d_orig‖), α_max), x_{k+1} = clip((1 − α)(x_k + η·d_k) + α(x + η·d_orig), 0, 1): the
  step leans towards the clean image so the result stays close to it (α_max = 0.1, extrapolation η = 1.05; the
  same for L∞ and L2, as the reference);
- once x_{k+1} is misclassified it is kept if it is the closest so far, and the iterate moves back towards x:
  x_{k+1} ← x + β·(x_{k+1} − x), β = 0.9;
- the final search: a bisection on the segment from x to the closest adversarial point found (the paper's last
  step; the reference code leaves it out), which can only shorten it.

Success means a misclassified point within ε; otherwise the clean image is returned, as the reference does. The
standard version runs one restart from the clean image (no random start), so the attack is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from advss_tf.attacks.pgd import ModelFn
from advss_tf.attacks.targets import STACK_ROWS, compacts, each_target, settled_examples, stacked

ALPHA_MAX = 0.1  # α_max: the largest weight of the step from the clean image
ETA = 1.05  # η: extrapolation of the projection step past the linearised boundary
BETA = 0.9  # β: backward step towards the clean image after a success
FINAL_SEARCH_STEPS = 10  # bisection steps of the final search (the segment shrinks 2^10-fold)
_FAR = 1e10  # the distance of "no adversarial point yet"
# A point this much within ε stays within it through the final search's rounding (distances in [0, 1]: a few ulps).
_ROUNDING = 1e-6


def _least_multiplier(slope: tf.Tensor, kink: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
    """The least λ ≥ 0 with g(λ) = Σ_i slope_i·min(λ, kink_i) = c, row by row (slope, kink ≥ 0 [M, D]; c ≥ 0 [M]).

    g is piecewise linear, continuous, non-decreasing and concave (a kink only ever takes its slope away), so
    Newton's method from below reaches the root exactly in a few steps, without sorting the kinks: with S(λ) the
    kinks below λ (saturated), the tangent at λ is the line through g's piece there, and its root
        λ' = (c − Σ_{i∈S(λ)} slope_i·kink_i) / Σ_{i∉S(λ)} slope_i
    lies at or below g's root (concavity: the tangent is above g) and at or above λ (g(λ) ≤ c). It saturates at
    least one more kink unless λ' already is the root: the iteration stops when S stops growing, after at most D + 1
    steps (1-5 measured on rows of 3,072 random coordinates with c up to 1,500). Each step is a few passes over the
    row, where sorting the kinks (the textbook solution, and this function's until 2026-12-07) cost ~10× as much on
    a CPU; and its two sums carry less float32 error than a 3,072-term cumulative sum in sorted order (against
    float64: ~2e-7 relative, the sorted sums' ~3e-6). Rows where even g(∞) = Σ slope_i·kink_i < c get +∞.
    """
    weighted = slope * kink  # each coordinate's share of g once saturated
    zero = tf.zeros_like(slope)
    reachable = tf.reduce_sum(weighted, axis=1) >= c

    def body(lam, count, done):
        saturated = kink < lam[:, None]
        now = tf.reduce_sum(tf.cast(saturated, tf.int32), axis=1)
        free_slope = tf.reduce_sum(tf.where(saturated, zero, slope), axis=1)
        tangent_root = (c - tf.reduce_sum(tf.where(saturated, weighted, zero), axis=1)) / tf.maximum(free_slope, 1e-12)
        step = tf.where(free_slope > 0.0, tf.maximum(lam, tangent_root), lam)
        settled = done | (now == count)  # S did not grow: λ was computed from its own S, so it is the root
        return tf.where(settled, lam, step), now, settled

    # The tangent's root at λ = 0, where nothing is saturated.
    start = c / tf.maximum(tf.reduce_sum(slope, axis=1), 1e-12)
    lam, _, _ = tf.while_loop(
        lambda lam, count, done: ~tf.reduce_all(done),
        body,
        (start, tf.zeros_like(c, tf.int32), ~reachable),
        maximum_iterations=tf.shape(kink)[1] + 1,
    )
    return tf.where(reachable, lam, tf.fill(tf.shape(c), tf.constant(float("inf"), c.dtype)))


def _towards_hyperplane(t: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Signs flipped so that c = ⟨w, t⟩ − b ≥ 0: (|w|, room, up, c) — lowering ⟨w, t⟩ by c reaches the hyperplane.

    Each coordinate lowers ⟨w, t⟩ by moving towards 0 (w_i > 0) or towards 1 (w_i < 0, `up`), at most `room`_i
    (its distance to that bound), and lowers it by |w_i| per unit moved.
    """
    c = tf.reduce_sum(w * t, axis=1) - b
    flip = tf.where(c >= 0.0, tf.ones_like(c), -tf.ones_like(c))
    w, c = w * flip[:, None], c * flip
    up = w < 0.0
    return tf.abs(w), tf.where(up, 1.0 - t, t), up, c


def project_linf(t: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """The step d of least ‖d‖∞ with ⟨w, t + d⟩ = b and t + d in [0, 1]^D, row by row (t, w [M, D]; b [M]).

    Where the box cannot reach the hyperplane, the step to the box's corner that gets closest. Coordinates with
    w_i = 0 do not move.

    Why one multiplier gives it: after flipping signs so that ⟨w, t⟩ − b = c ≥ 0, each coordinate lowers ⟨w, t⟩
    by moving towards 0 (w_i > 0) or 1 (w_i < 0) and can move at most p_i (its distance to that bound). A step of
    L∞ size λ moves coordinate i by min(λ, p_i), so the least λ solves g(λ) = Σ|w_i|·min(λ, p_i) = c; g is piecewise
    linear, increasing and concave with kinks at the p_i (`_least_multiplier`).
    """
    weight, room, up, c = _towards_hyperplane(t, w, b)
    lam = _least_multiplier(weight, room, c)
    move = tf.minimum(lam[:, None], room)
    return tf.where(up, move, -move) * tf.cast(w != 0.0, t.dtype)


def project_l2(t: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """The step d of least ‖d‖₂ with ⟨w, t + d⟩ = b and t + d in [0, 1]^D, row by row (t, w [M, D]; b [M]).

    Where the box cannot reach the hyperplane, the step to the box's corner that gets closest (as `project_linf`).
    Coordinates with w_i = 0 do not move.

    Why one multiplier gives it: min ½‖d‖² subject to ⟨w, d⟩ = −c and the box is a convex problem whose KKT
    conditions make d the box-clipped multiple of the normal, d_i = clip(−λ·w_i, −t_i, 1 − t_i), for one Lagrange
    multiplier λ ≥ 0 (after flipping signs so that c = ⟨w, t⟩ − b ≥ 0). Coordinate i then moves |d_i| =
    min(λ·|w_i|, p_i) towards its bound (p_i its distance to it) and lowers ⟨w, t⟩ by |w_i|·|d_i|, so λ solves
    g(λ) = Σ w_i²·min(λ, p_i/|w_i|) = c: the same piecewise linear, increasing equation as the L∞ projection's, with
    kinks at p_i/|w_i| and slopes w_i², solved the same way. The reference code (``fab_projections.py``) searches
    the sorted kinks by bisection; the value is the same.
    """
    weight, room, up, c = _towards_hyperplane(t, w, b)
    moves = tf.square(weight) > 0.0  # w_i² underflowing to 0 would give a kink of ∞ with slope 0
    kink = tf.where(moves, room / tf.where(moves, weight, tf.ones_like(weight)), tf.zeros_like(room))
    lam = _least_multiplier(tf.square(weight), kink, c)
    move = tf.minimum(lam[:, None], kink) * weight  # unreachable rows: λ = ∞, every coordinate at its bound
    move = tf.where(moves, tf.minimum(move, room), tf.zeros_like(move))
    return tf.where(up, move, -move)


PROJECTIONS = {"linf": project_linf, "l2": project_l2}


def _linf(v: tf.Tensor) -> tf.Tensor:
    return tf.reduce_max(tf.abs(v), axis=1)


def _l2(v: tf.Tensor) -> tf.Tensor:
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=1))


DISTANCES = {"linf": _linf, "l2": _l2}


def fab_run(
    model_fn: ModelFn,
    x: tf.Tensor,
    labels: tf.Tensor,
    target: tf.Tensor,
    *,
    eps: float,
    steps: int,
    alpha_max: float = ALPHA_MAX,
    eta: float = ETA,
    beta: float = BETA,
    norm: str = "linf",
    settled: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """One targeted FAB run from the clean images: (closest point found within ε, else x; success bool [N]).

    `norm` ("linf" or "l2") picks the projection and the distance; α_max, η and β are the same for both, as in the
    reference. `settled`: bool [N] (a point within ε found) → bool [N], the rows that may stop: their state stays
    as it was and the others iterate on alone (a dynamic batch dimension). Further iterations only ever replace a
    row's point by a closer one, so a row with a point within ε succeeds either way. None: every row runs every
    iteration, as the reference.
    """
    _check_norm(norm)
    project, distance = PROJECTIONS[norm], DISTANCES[norm]
    shape = tf.shape(x)
    flat = lambda v: tf.reshape(v, [tf.shape(v)[0], -1])  # noqa: E731
    x0 = flat(x)
    labels = tf.cast(labels, tf.int32)
    target = tf.cast(target, tf.int32)

    def unflat(points):
        return tf.reshape(points, tf.concat([tf.shape(points)[:1], shape[1:]], 0))

    def predicted_wrong(points, labels):
        return tf.argmax(model_fn(unflat(points)), axis=-1, output_type=tf.int32) != labels

    def step(x1, best, best_dist, take):
        x0_rows, labels_rows, target_rows = take(x0), take(labels), take(target)
        with tf.GradientTape() as tape:
            tape.watch(x1)
            logits = tf.cast(model_fn(unflat(x1)), tf.float32)
            f = tf.gather(logits, target_rows, batch_dims=1) - tf.gather(logits, labels_rows, batch_dims=1)
        w = tape.gradient(f, x1, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        b = tf.reduce_sum(w * x1, axis=1) - f
        # One projection call for both starting points, as the two share the hyperplane.
        d = project(tf.concat([x1, x0_rows], 0), tf.concat([w, w], 0), tf.concat([b, b], 0))
        d1, d2 = tf.split(d, 2, axis=0)
        a1, a2 = tf.maximum(distance(d1), 1e-8), tf.maximum(distance(d2), 1e-8)
        alpha = tf.clip_by_value(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
        x1 = tf.clip_by_value((1.0 - alpha) * (x1 + eta * d1) + alpha * (x0_rows + eta * d2), 0.0, 1.0)
        x1 = tf.stop_gradient(x1)
        wrong = predicted_wrong(x1, labels_rows)
        dist = distance(x1 - x0_rows)
        closer = wrong & (dist < best_dist)
        best = tf.where(closer[:, None], x1, best)
        best_dist = tf.where(closer, dist, best_dist)
        x1 = tf.where(wrong[:, None], x0_rows + beta * (x1 - x0_rows), x1)
        return x1, best, best_dist

    def within(best_dist):
        # A point within ε, with room for the rounding of the final search's x + t·(best − x) (see `settled`).
        return best_dist + _ROUNDING <= eps

    def body(i, x1, best, best_dist):
        if settled is None:
            return (i + 1, *step(x1, best, best_dist, lambda t: t))
        rows = tf.where(~settled(within(best_dist)))
        take = lambda t: tf.gather_nd(t, rows)  # noqa: E731
        new = step(take(x1), take(best), take(best_dist), take)
        return (i + 1, *(tf.tensor_scatter_nd_update(old, rows, v) for old, v in zip((x1, best, best_dist), new)))

    def running(i, x1, best, best_dist):
        if settled is None:
            return i < steps
        return (i < steps) & ~tf.reduce_all(settled(within(best_dist)))

    far = tf.fill([shape[0]], tf.constant(_FAR, x0.dtype))
    _, _, best, best_dist = tf.while_loop(running, body, (tf.constant(0), x0, x0, far))
    found = best_dist < _FAR

    # Final search: the least t in (0, 1] with x + t·(best − x) misclassified, by bisection (assumes one crossing).
    def search(_, low, high):
        mid = 0.5 * (low + high)
        wrong = predicted_wrong(x0 + mid[:, None] * (best - x0), labels)
        return _ + 1, tf.where(wrong, low, mid), tf.where(wrong, mid, high)

    zeros = tf.zeros_like(best_dist)
    _, _, high = tf.while_loop(
        lambda k, *_: k < FINAL_SEARCH_STEPS, search, (tf.constant(0), zeros, tf.ones_like(best_dist))
    )
    searched = x0 + high[:, None] * (best - x0)
    best = tf.where(found[:, None], searched, x0)
    success = found & (distance(best - x0) <= eps)
    result = tf.where(success[:, None], best, x0)
    return tf.reshape(result, shape), success


def _check_norm(norm: str) -> None:
    if norm not in PROJECTIONS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(PROJECTIONS)}")


def fab_targeted(
    model_fn: ModelFn,
    x: tf.Tensor,
    y,
    *,
    eps: float,
    steps: int,
    seed: tf.Tensor,
    targets: int = 9,
    norm: str = "linf",
    fast: bool = True,
    **unused,
) -> tf.Tensor:
    """FAB-T (L∞ or L2): one targeted FAB run per target class, each on the examples no earlier run fooled.

    Args:
      model_fn: images in [0, 1] → logits [N, K] (gradients of two logits per step).
      x: clean images [N, H, W, C] in [0, 1]; y: integer labels [N].
      eps: radius (in `norm`) on the [0, 1] pixel scale: a point found further away counts as a failure.
      steps: iterations per target (the standard version: 100).
      seed: int [2]; FAB-T starts from the clean image, so only the target order matters and this is unused.
      targets: target classes, the top non-true ones by clean logit (the standard version: 9).
      norm: "linf" or "l2": the projection (`project_linf` / `project_l2`) and the distance FAB minimises.
      fast: (dynamic batch dimension only) the targets of few survivors run stacked in one run (`each_target`'s
        `rows`), and an example stops once one of its targets found a point within ε (`fab_run`'s `settled`);
        False: the plain path, one target after another, every example to the end. The same examples succeed
        either way.

    Returns:
      Per example the closest adversarial point found within ε, else the clean image; gradient-stopped.
    """
    _check_norm(norm)
    x = tf.convert_to_tensor(x)
    labels = tf.cast(y, tf.int64)
    fast = fast and compacts(x)

    def run_group(take, targets_group, _seeds):
        if not fast:  # one target (targets_group [1, M]): the plain run
            return fab_run(model_fn, take(x), take(labels), targets_group[0], eps=eps, steps=steps, norm=norm)
        group = tf.shape(targets_group)[0]
        rows = stacked(take(x), group), stacked(take(labels), group), tf.reshape(targets_group, [-1])
        return fab_run(model_fn, *rows, eps=eps, steps=steps, norm=norm, settled=settled_examples(group))

    rows = STACK_ROWS if fast else None
    return each_target(run_group, model_fn, x, labels, count=targets, seed=seed, rows=rows)
