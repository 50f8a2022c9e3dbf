"""Square Attack (Andriushchenko et al., ECCV 2020, "Square Attack: a query-efficient black-box adversarial attack
via random search"), L∞ and L2: AutoAttack's gradient-free component, so masked or broken gradients cannot hide
from it.

Written from the paper (Algorithm 1, its L∞ and L2 sampling distributions of Sec. 3.1–3.2) and the reference
``fra31/auto-attack`` ``autoattack/square.py``. Both versions share the random search (`_random_search`): from a
start point, each query proposes a change of the current best point inside square windows; the point is kept if
the margin loss z_y − max_{i≠y} z_i decreased or the example is misclassified, and an example stops once
misclassified (margin ≤ 0). The window's side is h = round(√(p·H·W)), p starting at p_init = 0.8 and halving on the
paper's schedule: after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000. AutoAttack's standard version
(the reference ``AutoAttack`` builds its Square with ``resc_schedule=False``) runs that schedule as it is, whatever
the budget: with 5,000 queries p halves for the last time after iteration 4,000 (p = 0.8/128). That is the default
here. A standalone Square may instead rescale the schedule to its budget (``rescale_schedule=True``, the reference
``SquareAttack``'s own default: iteration i counts as i·10,000/queries, so 5,000 queries halve p twice as fast).

L∞ (`square(..., norm="linf")`):

- start: vertical stripes, x + ε·s with one random sign s per (example, column, channel), clipped to [0, 1];
- each query: a window at a uniformly random position gets a random sign per channel, i.e. δ_window = ±2ε per
  channel added to the current best point, projected onto the ε-ball and [0, 1].

L2 (`norm="l2"`), built from the "meta pseudo-Gaussian" η of an s×s window (`pseudo_gaussian`): its upper half
holds +η^(s/2, s), its lower half −η^(s−s/2, s), where η^(r, s) on an r×s rectangle is Σ_{k=d}^{K} 1/(k+1)² at a
pixel whose Chebyshev distance from the rectangle's centre is d (K = max(r, s) // 2): concentric rings, peaked at
the centre; each half has unit L2 norm, the window is randomly transposed.

- start: a grid of (H // 5)-pixel windows (5×5 of them on a 32×32 image), each an η with a random sign per channel,
  rescaled to ‖δ‖₂ = ε, clipped to [0, 1];
- each query (the paper's Algorithm 3; window side at least 3 and odd, as the reference): two windows W1, W2 at
  random positions; per channel c, the perturbation in W2 is set to 0 and the one in W1 is replaced by
  ±η + ν_{W1,c}/‖ν_{W1,c}‖₂ (ν = best − x), rescaled to the mass the two windows held in that channel plus an
  equal share of the unused budget: ‖·‖₂² = ‖ν_{W1∪W2,c}‖₂² + (ε² − ‖ν‖₂²)/C. So ‖δ‖₂ = ε before clipping to
  [0, 1] (whatever clipping takes is the next query's unused budget); the point is also projected onto the ball
  against rounding.

Differences from the reference, which draws one window position, one sign pattern and one transposition per batch:
here each example draws its own, as the paper's Algorithm 1 does per image. For L2 the reference rescales W1 with
the union's mass summed over all channels (not the channel's own) and then renormalises the whole perturbation to
ε; we keep the paper's per-channel budget, which is already ε. Only model outputs are used, never a gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from advss_tf.attacks.l2 import l2_norm, per_example, project_l2
from advss_tf.attacks.losses import true_and_best_other
from advss_tf.attacks.pgd import ModelFn
from advss_tf.attacks.targets import on_survivors

P_INIT = 0.8
# The paper's schedule: p = p_init / 2^k after the k-th of these iterations (out of 10,000).
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SCHEDULE_LENGTH = 10_000
L2_MIN_SIDE = 3  # the L2 windows' smallest side (odd, so the pseudo-Gaussian has a centre row)
L2_START_TILES = 5  # the L2 start tiles the image with windows of side H // 5
_TINY = 1e-12


def p_schedule(i: tf.Tensor, queries: int, p_init: float = P_INIT, rescale: bool = False) -> tf.Tensor:
    """Fraction p of pixels in the window at iteration i (0-based) of a run of `queries` iterations (float32).

    p = p_init / 2^k after the k-th of `P_HALVINGS`. `rescale`: count iteration i as i·10,000 // queries (the
    standalone SquareAttack's default); AutoAttack's standard version does not (False).
    """
    it = tf.cast(i, tf.int64)
    if rescale:
        it = it * SCHEDULE_LENGTH // queries  # rounding down, as the reference
    it = tf.cast(it, tf.float32)
    halvings = tf.reduce_sum(tf.cast(it > tf.constant(P_HALVINGS, tf.float32), tf.float32))
    return p_init * tf.pow(0.5, halvings)


def margin(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """z_y − max_{i≠y} z_i [N]: positive while the example is classified correctly."""
    true, other = true_and_best_other(labels, logits)
    return true - other


def _window_side(i: tf.Tensor, queries: int, p_init: float, rescale: bool, height, width) -> tf.Tensor:
    """round(√(p·H·W)) at iteration i, at least 1 and at most the image's smaller side (int32)."""
    pixels = tf.cast(height * width, tf.float32)
    side = tf.maximum(tf.cast(tf.round(tf.sqrt(p_schedule(i, queries, p_init, rescale) * pixels)), tf.int32), 1)
    return tf.minimum(side, tf.minimum(height, width))


def _random_corners(seeds: tf.Tensor, n, side, height, width) -> tuple[tf.Tensor, tf.Tensor]:
    """Per example a uniformly random (top, left) [N] int32 of a side×side window inside the H×W image.

    `seeds` [2, 2]: one stateless seed for the rows, one for the columns.
    """
    top = tf.random.stateless_uniform([n], seed=seeds[0], minval=0, maxval=height - side + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([n], seed=seeds[1], minval=0, maxval=width - side + 1, dtype=tf.int32)
    return top, left


def _window(top: tf.Tensor, left: tf.Tensor, side, height, width, dtype) -> tf.Tensor:
    """The mask [N, H, W, 1] (1 inside, 0 outside) of each example's side×side window at (top, left)."""
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
    return tf.cast(in_rows[:, :, None, None] & in_cols[:, None, :, None], dtype)


def _random_signs(seed: tf.Tensor, shape, dtype) -> tf.Tensor:
    return 2.0 * tf.cast(tf.random.stateless_uniform(shape, seed=seed, minval=0, maxval=2, dtype=tf.int32), dtype) - 1.0


def _random_search(
    model_fn: ModelFn,
    x: tf.Tensor,
    labels: tf.Tensor,
    x_start: tf.Tensor,
    queries: int,
    draw: Callable[[tf.Tensor], tuple[tf.Tensor, ...]],
    propose: Callable[[tf.Tensor, tf.Tensor, tuple[tf.Tensor, ...]], tf.Tensor],
) -> tf.Tensor:
    """The random search both norms share, from `x_start`, for `queries` iterations; returns the best points.

    `draw(i)` gives iteration i's randomness for the whole batch (tensors [N, ...]), so an example's draws do not
    depend on which others are still standing; `propose(x, best, draws)` turns the taken rows into candidates.
    """
    margin_best = margin(labels, model_fn(x_start))

    def body(i, x_best, margin_best):
        draws = draw(tf.cast(i, tf.int64))

        def run(take):
            x_k, best_k = take(x), take(x_best)
            x_new = propose(x_k, best_k, tuple(take(d) for d in draws))
            margin_new = margin(take(labels), model_fn(x_new))
            # The margin loss is the loss: a lower margin, or a misclassification, is kept.
            keep = (margin_new < take(margin_best)) | (margin_new <= 0.0)
            return tf.where(per_example(keep, x_new), x_new, best_k), tf.where(keep, margin_new, take(margin_best))

        x_best, margin_best = on_survivors(run, margin_best > 0.0, x_best, margin_best)
        return i + 1, x_best, margin_best

    _, x_best, _ = tf.while_loop(
        lambda i, _, m: (i < queries) & tf.reduce_any(m > 0.0), body, (tf.constant(0), x_start, margin_best)
    )
    return tf.stop_gradient(x_best)


def square(
    model_fn: ModelFn,
    x: tf.Tensor,
    y,
    *,
    eps: float,
    steps: int,
    seed: tf.Tensor,
    norm: str = "linf",
    p_init: float = P_INIT,
    rescale_schedule: bool = False,
    **unused,
) -> tf.Tensor:
    """Square Attack (L∞ or L2) with `steps` random-search iterations (one model query each, plus one at the start).

    Args:
      model_fn: images in [0, 1] → logits [N, K]; only its outputs are used.
      x: clean images [N, H, W, C] in [0, 1] (H = W as the paper's windows are square; L2: H and W static, as the
        start's grid of windows is laid out when the function is traced).
      y: integer labels [N].
      eps: radius (in `norm`) on the [0, 1] pixel scale.
      seed: int [2] for the stateless start, windows, signs (and L2: the windows' transpositions).
      steps: the query budget, in iterations (AutoAttack's standard version: 5,000).
      norm: "linf" or "l2" (the module docstring says how each samples).
      p_init: the initial window fraction (the paper: 0.8).
      rescale_schedule: rescale p's schedule to `steps` (`p_schedule`); False: AutoAttack's standard version.

    Returns:
      Per example the best point found (misclassified where the attack succeeded) within ε, gradient-stopped.
    """
    if norm not in SAMPLERS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ValueError(f"square needs at least one query, got {steps}")
    x = tf.convert_to_tensor(x)
    schedule = (steps, p_init, bool(rescale_schedule))
    x_start, draw, propose = SAMPLERS[norm](x, eps, schedule, tf.cast(seed, tf.int64))
    return _random_search(model_fn, x, tf.cast(y, tf.int64), x_start, steps, draw, propose)


def _linf_sampler(x: tf.Tensor, eps: float, schedule: tuple[int, float, bool], seed: tf.Tensor):
    """L∞: the vertical-stripes start, and per query one window of ±2ε per channel (`_random_search`'s parts)."""
    n, height, width, channels = tf.unstack(tf.shape(x))
    stripes = _random_signs(seed, [n, 1, width, channels], x.dtype)
    x_start = tf.clip_by_value(x + eps * stripes, 0.0, 1.0)

    def draw(i):
        """Whole-batch window mask [N, H, W, 1] and signs [N, 1, 1, C] of iteration i."""
        seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, i), 3)
        side = _window_side(i, *schedule, height, width)
        top, left = _random_corners(seeds[:2], n, side, height, width)
        return _window(top, left, side, height, width, x.dtype), _random_signs(seeds[2], [n, 1, 1, channels], x.dtype)

    def propose(x_k, best_k, draws):
        window, signs = draws
        # Inside the window the new point is the ε-ball's corner of the drawn sign (best ± 2ε, projected).
        x_new = best_k + 2.0 * eps * window * signs
        return tf.clip_by_value(tf.clip_by_value(x_new, x_k - eps, x_k + eps), 0.0, 1.0)

    return x_start, draw, propose


def _rings(rows: tf.Tensor, cols: tf.Tensor, num_rows, num_cols, dtype) -> tf.Tensor:
    """η^(r, s) at local integer coordinates inside an r×s rectangle: Σ_{k=d}^{K} 1/(k+1)², d the Chebyshev distance
    from the centre (r // 2, s // 2), K = max(r, s) // 2 (every pixel of the rectangle has d ≤ K)."""
    last = tf.maximum(num_rows, num_cols) // 2
    terms = 1.0 / tf.square(tf.cast(tf.range(last + 1) + 1, dtype))
    tail = tf.cumsum(terms, reverse=True)  # tail[d] = Σ_{k=d}^{K} 1/(k+1)²
    d = tf.maximum(tf.abs(rows - num_rows // 2), tf.abs(cols - num_cols // 2))
    return tf.gather(tail, tf.minimum(d, last))


def _unit(v: tf.Tensor) -> tf.Tensor:
    return v / per_example(l2_norm(v) + _TINY, v)


def pseudo_gaussian(top: tf.Tensor, left: tf.Tensor, side, transpose: tf.Tensor, height, width, dtype) -> tf.Tensor:
    """The L2 Square Attack's window pattern [N, H, W, 1]: per example, at (top, left), unit L2 norm, 0 outside.

    The upper side // 2 rows hold η^(side // 2, side), the others −η^(side − side // 2, side) (`_rings`), each half
    normalised to unit norm before the whole is; `transpose` [N] bool flips it about the diagonal.
    """
    rows = tf.range(height)[None, :, None] - top[:, None, None]
    cols = tf.range(width)[None, None, :] - left[:, None, None]
    rows, cols = rows + 0 * cols, cols + 0 * rows  # both [N, H, W]
    flip = transpose[:, None, None]
    rows, cols = tf.where(flip, cols, rows), tf.where(flip, rows, cols)
    inside = (rows >= 0) & (rows < side) & (cols >= 0) & (cols < side)
    half = side // 2
    upper = tf.where(inside & (rows < half), _rings(rows, cols, half, side, dtype), 0.0)
    lower = tf.where(inside & (rows >= half), _rings(rows - half, cols, side - half, side, dtype), 0.0)
    return _unit(_unit(upper) - _unit(lower))[..., None]


def _l2_sampler(x: tf.Tensor, eps: float, schedule: tuple[int, float, bool], seed: tf.Tensor):
    """L2: the tiled pseudo-Gaussian start, and per query the mass of two windows moved into one (Algorithm 3)."""
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        raise ValueError(f"square L2 needs a static image size, got {x.shape}")
    n, channels = tf.shape(x)[0], tf.shape(x)[3]
    start_seed, loop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    x_start = tf.clip_by_value(x + eps * _tiled_start(start_seed, n, channels, height, width, x.dtype), 0.0, 1.0)

    def draw(i):
        """Whole-batch windows W1, W2 [N, H, W, 1], W1's pattern [N, H, W, 1] and its signs [N, 1, 1, C]."""
        seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(loop_seed, i), 6)
        side = tf.maximum(_window_side(i, *schedule, height, width), L2_MIN_SIDE)
        side = tf.minimum(side + 1 - side % 2, min(height, width))  # odd, as the reference
        top, left = _random_corners(seeds[0:2], n, side, height, width)
        top2, left2 = _random_corners(seeds[2:4], n, side, height, width)
        transpose = tf.random.stateless_uniform([n], seed=seeds[4]) < 0.5
        pattern = pseudo_gaussian(top, left, side, transpose, height, width, x.dtype)
        first = _window(top, left, side, height, width, x.dtype)
        second = _window(top2, left2, side, height, width, x.dtype)
        return first, second, pattern, _random_signs(seeds[5], [n, 1, 1, channels], x.dtype)

    def propose(x_k, best_k, draws):
        first, second, pattern, signs = draws
        nu = best_k - x_k
        union = tf.maximum(first, second)
        unused = tf.maximum(eps**2 - tf.square(l2_norm(nu)), 0.0)  # [M]
        per_channel = lambda v: tf.sqrt(tf.reduce_sum(tf.square(v), axis=[1, 2], keepdims=True))  # noqa: E731
        old = nu * first / (per_channel(nu * first) + _TINY)
        proposal = pattern * signs + old  # zero outside W1
        budget = tf.sqrt(tf.square(per_channel(nu * union)) + per_example(unused, nu) / tf.cast(channels, nu.dtype))
        nu = nu * (1.0 - union) + proposal / (per_channel(proposal) + _TINY) * budget
        return project_l2(x_k + nu, x_k, eps)

    return x_start, draw, propose


def _tiled_start(seed: tf.Tensor, n, channels, height: int, width: int, dtype) -> tf.Tensor:
    """The L2 start's direction [N, H, W, C], unit norm: a grid of pseudo-Gaussian windows of side H // 5, each with a
    random sign per (example, channel) and a random transposition per example."""
    side = max(height // L2_START_TILES, 1)
    offset = (height - side * L2_START_TILES) // 2
    corners = [
        (offset + side * r, offset + side * c)
        for r in range(height // side)
        for c in range(width // side)
        if offset + side * (r + 1) <= height and offset + side * (c + 1) <= width
    ]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    signs = _random_signs(seeds[0], [len(corners), n, 1, 1, channels], dtype)
    transposes = tf.random.stateless_uniform([len(corners), n], seed=seeds[1]) < 0.5
    delta = 0.0
    for k, (top, left) in enumerate(corners):
        at = tf.fill([n], top), tf.fill([n], left)
        delta += pseudo_gaussian(*at, side, transposes[k], height, width, dtype) * signs[k]
    return _unit(delta)


SAMPLERS = {"linf": _linf_sampler, "l2": _l2_sampler}
