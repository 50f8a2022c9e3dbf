"""Standard and robust accuracy over a test set, and the gradient-masking checks (SPEC §6, §9).

Robust accuracy follows AutoAttack's worst case: an example counts as robust only if the model classifies it
correctly when clean *and* after every restart of the attack. Each (attack, batch, restart) draws its random start
from its own stateless seed derived from the run's seed and the attack's name, so a result does not depend on the
order of `--attacks` or on which other attacks ran.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from advss_tf.attacks.losses import cw_margin
from advss_tf.attacks.registry import MONOTONE_PAIRS, AttackSpec, perturbation_norm
from advss_tf.evaluation.records import PartialStore
from advss_tf.training.loop import Interrupted, SignalGuard

ModelFn = Callable[[tf.Tensor], tf.Tensor]
# Accuracy differences within this much are noise (random starts), not a masking signal: half a point, or two
# examples on small test sets.
MASKING_TOLERANCE = 0.005
MASKING_TOLERANCE_EXAMPLES = 2
# More than this fraction of test images with an all-zero input gradient of the (non-saturating) margin loss means
# the model hides its gradients.
ZERO_GRADIENT_LIMIT = 0.01
SHOWN_EXAMPLES = 6
# PGD-20 within this much of clean accuracy while the worst case over every attack is this far below it: PGD
# was blind (masked gradients), not the model robust.
PGD_NEAR_CLEAN = 0.05
WORST_FAR_BELOW = 0.10

_guard: SignalGuard | None = None


class EvaluationInterrupted(Interrupted):
    """SIGTERM/SIGINT arrived during an evaluation; every finished batch is recorded."""

    def __init__(self, signum: int):
        RuntimeError.__init__(
            self, f"stopped by signal {signum}; finished batches are kept, re-run the same command to continue"
        )
        self.signum = signum


def watch_signals(guard: SignalGuard | None) -> None:
    """Makes the attack loops stop after their current batch once `guard` saw a signal (None: stop watching)."""
    global _guard
    _guard = guard


def check_stop() -> None:
    """Raises EvaluationInterrupted when a watched signal arrived (called between batches)."""
    if _guard is not None and _guard.signum is not None:
        raise EvaluationInterrupted(_guard.signum)


@dataclasses.dataclass
class AttackOutcome:
    """One attack over the test set: which examples stayed robust, how long it took, the largest perturbation."""

    spec: AttackSpec
    robust: np.ndarray  # bool [N]
    seconds: float  # attacking, tracing excluded
    cpu_seconds: float  # this process's CPU time (all threads) while attacking: comparable on a shared machine
    trace_seconds: float
    max_perturbation: float
    shown_adversarial: np.ndarray  # float32 [k, 32, 32, 3]: the first images' adversarial versions, for figures
    num_attacked: int | None = None  # examples the attack ran on (None: all; a composite's later stages: fewer)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.robust)) if len(self.robust) else 0.0

    def to_dict(self) -> dict[str, Any]:
        """What results.json records about the attack's outcome."""
        n = len(self.robust)
        attacked = n if self.num_attacked is None else self.num_attacked
        return {
            **self.spec.to_dict(),
            "accuracy": self.accuracy,
            "num_robust": int(np.sum(self.robust)),
            "num_examples": n,
            "num_attacked": attacked,
            "max_perturbation": self.max_perturbation,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "trace_seconds": self.trace_seconds,
            "images_per_sec": attacked / self.seconds if self.seconds > 0 else None,
        }


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def to_float(images: np.ndarray) -> np.ndarray:
    """float32 images in [0, 1]: uint8 ones divided by 255, float ones (already in [0, 1]) as float32."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32, copy=False)


def padded(x: np.ndarray, size: int | None) -> np.ndarray:
    """`x` repeated at its last row up to `size` rows (for signatures with a fixed batch size); the caller drops
    the padding's results. With `size` None, `x` itself."""
    if size is None or len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


def attack_seed(seed: int, name: str, batch: int, restart: int) -> np.ndarray:
    """The stateless seed [2] of one (attack, batch, restart): independent of the other attacks and their order."""
    return np.array([seed, zlib.crc32(f"{name}/{batch}/{restart}".encode())], np.int64)


def _signature(fixed_batch: int | None, image_shape) -> list[tf.TensorSpec]:
    """(images [B, H, W, C], labels [B]) of the traced steps; the test images' own H, W, C."""
    return [
        tf.TensorSpec([fixed_batch, *(int(d) for d in image_shape)], tf.float32),
        tf.TensorSpec([fixed_batch], tf.int64),
    ]


def clean_evaluation(
    model_fn: ModelFn,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    fixed_batch: int | None,
    progress: bool,
) -> dict[str, Any]:
    """Clean predictions plus the gradient health of every test image.

    Args:
      model_fn: float32 images [N, H, W, C] in [0, 1] → logits [N, K].
      images: uint8 [N, H, W, C] (or float32 in [0, 1]); labels: int [N].
      batch_size: images per call (the signature's fixed size, if it has one).
      fixed_batch: the signature's fixed batch size (batches are padded to it), or None.
      progress: show a progress bar.

    Returns:
      {"correct": bool [N], "zero_gradient": bool [N], "nonfinite_gradient": bool [N]}: the margin loss's input
      gradient is all zero / has a NaN or Inf.
    """

    @tf.function(input_signature=_signature(fixed_batch, images.shape[1:]), reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = model_fn(x)
            # The uncapped margin saturates nowhere: softmax rounding to 1 zeroes the CE gradient of a confident
            # healthy model, and CW's cap κ zeroes it far past the boundary. An all-zero gradient here means none.
            loss = cw_margin(y, logits, confidence=float("inf"))
        grad = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        axes = [1, 2, 3]
        finite = tf.reduce_all(tf.math.is_finite(grad), axis=axes) & tf.reduce_all(tf.math.is_finite(logits), axis=-1)
        zero = tf.reduce_all(tf.equal(grad, 0.0), axis=axes)
        return tf.argmax(logits, -1) == y, zero, ~finite

    n = len(images)
    out = {k: np.zeros([n], bool) for k in ("correct", "zero_gradient", "nonfinite_gradient")}
    bar = keras.utils.Progbar(n, stateful_metrics=["acc"], unit_name="image") if progress else None
    for sl in batch_slices(n, batch_size):
        k = sl.stop - sl.start
        x = padded(to_float(images[sl]), fixed_batch)
        y = padded(labels[sl].astype(np.int64), fixed_batch)
        for key, value in zip(("correct", "zero_gradient", "nonfinite_gradient"), step(x, y)):
            out[key][sl] = value.numpy()[:k]
        if bar is not None:
            bar.update(sl.stop, values=[("acc", float(np.mean(out["correct"][: sl.stop])))])
    return out


RANDOMNESS_PASSES = 5
# Outputs normalised to unit L2 norm that differ by more than this between two passes of the same inputs: a
# randomised model (the reference's `check_randomized` threshold).
RANDOMNESS_TOLERANCE = 1e-4


def randomness_check(
    model_fn: ModelFn,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    eps: float,
    norm: str,
    seed: int,
    fixed_batch: int | None = None,
    passes: int = RANDOMNESS_PASSES,
) -> dict[str, Any]:
    """Does the model answer the same inputs the same way? `passes` forward passes of one batch, clean and
    perturbed (a random point of the ε-ball around it), as AutoAttack's `check_randomized`.

    Args:
      model_fn: float32 images in [0, 1] → logits.
      images: one batch, uint8 or float32 [n, H, W, C]; labels: int [n].
      eps, norm: the radius and norm of the perturbed inputs (the attack's).
      seed: the perturbation's seed.
      fixed_batch: the signature's fixed batch size (the batch is padded to it), or None.

    Returns:
      {"randomised", "passes", "num_images", "max_output_difference": {"clean", "perturbed"}, "predictions_differ",
      "tolerance"}: randomised when the normalised outputs of two passes differ by more than the tolerance or the
      number of correct predictions changes between passes.
    """
    x = to_float(images)
    rng = np.random.default_rng([seed, zlib.crc32(b"randomness_check")])
    if norm == "linf":
        delta = eps * rng.choice(np.array([-1.0, 1.0], np.float32), size=x.shape)
    else:
        g = rng.standard_normal(x.shape).astype(np.float32)
        delta = eps * g / np.sqrt(np.sum(g**2, axis=tuple(range(1, g.ndim)), keepdims=True))
    inputs = {"clean": x, "perturbed": np.clip(x + delta, 0.0, 1.0).astype(np.float32)}
    n = len(x)
    forward = tf.function(lambda z: model_fn(z), input_signature=[_signature(fixed_batch, x.shape[1:])[0]])
    differences, correct_counts = {}, set()
    for name, batch in inputs.items():
        outputs = []
        for _ in range(passes):
            out = forward(padded(batch, fixed_batch)).numpy()[:n].astype(np.float64)
            if name == "clean":
                correct_counts.add(int(np.sum(np.argmax(out, -1) == labels)))
            outputs.append(out / (np.linalg.norm(out, axis=-1, keepdims=True) + 1e-10))
        differences[name] = max(
            (float(np.max(np.linalg.norm(a - b, axis=-1))) for i, a in enumerate(outputs) for b in outputs[i + 1 :]),
            default=0.0,
        )
    differ = len(correct_counts) > 1
    return {
        "randomised": bool(differ or max(differences.values()) > RANDOMNESS_TOLERANCE),
        "passes": passes,
        "num_images": n,
        "max_output_difference": differences,
        "predictions_differ": differ,
        "tolerance": RANDOMNESS_TOLERANCE,
    }


class Predictor:
    """Whether a model classifies uint8 images correctly, in batches, through one traced forward pass."""

    def __init__(self, model_fn: ModelFn, fixed_batch: int | None = None):
        self.fixed_batch = fixed_batch
        self._model_fn = model_fn
        self._steps: dict[tuple, Callable] = {}  # one traced step per image shape

    def correct(self, images: np.ndarray, labels: np.ndarray, batch_size: int) -> np.ndarray:
        """bool [N]: prediction == label for each image (uint8 [N, H, W, 3]); forward passes only."""
        shape = tuple(images.shape[1:])
        if shape not in self._steps:
            self._steps[shape] = tf.function(
                lambda x, y: tf.argmax(self._model_fn(x), -1) == y,
                input_signature=_signature(self.fixed_batch, shape),
                reduce_retracing=True,
            )
        out = np.zeros([len(images)], bool)
        for sl in batch_slices(len(images), batch_size):
            x = padded(to_float(images[sl]), self.fixed_batch)
            y = padded(labels[sl].astype(np.int64), self.fixed_batch)
            out[sl] = self._steps[shape](x, y).numpy()[: sl.stop - sl.start]
        return out


def _attack_step(
    model_fn: ModelFn,
    spec: AttackSpec,
    fixed_batch: int | None,
    strategy: tf.distribute.Strategy | None,
    image_shape: tuple[int, ...] = (32, 32, 3),
) -> tuple[Callable[[list[tuple]], list[tuple]], Callable[[], None]]:
    """(run, trace): `run` attacks a group of batches [(x, y, seed)] — one per replica under `strategy`, each
    batch whole on its replica, so the numbers equal one device's — and returns (x_adv, correct, max ‖δ‖) each."""

    def attack(x, y, s):
        x_adv = spec(model_fn, x, y, s)
        correct = tf.argmax(model_fn(x_adv), -1) == y
        return x_adv, correct, tf.reduce_max(perturbation_norm(x_adv, x, spec.norm))

    if strategy is None or strategy.num_replicas_in_sync == 1:
        signature = [*_signature(fixed_batch, image_shape), tf.TensorSpec([2], tf.int64)]
        step = tf.function(attack, input_signature=signature, reduce_retracing=True)
        return (lambda group: [tuple(t.numpy() for t in step(*b)) for b in group]), step.get_concrete_function

    replicas = strategy.num_replicas_in_sync
    distributed = tf.function(lambda x, y, s: strategy.run(attack, args=(x, y, s)), reduce_retracing=True)

    def run(group):
        full = group + [group[-1]] * (replicas - len(group))  # idle replicas repeat the last batch; dropped below

        def per_replica(i):
            return strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.constant(full[ctx.replica_id_in_sync_group][i])
            )

        outputs = distributed(*(per_replica(i) for i in range(3)))
        local = [[t.numpy() for t in strategy.experimental_local_results(o)] for o in outputs]
        return list(zip(*local))[: len(group)]

    return run, lambda: None


def run_attack(
    model_fn: ModelFn,
    spec: AttackSpec,
    images: np.ndarray,
    labels: np.ndarray,
    clean_correct: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    fixed_batch: int | None = None,
    progress: bool = False,
    indices: np.ndarray | None = None,
    seed_name: str | None = None,
    store: PartialStore | None = None,
    key: str | None = None,
    strategy: tf.distribute.Strategy | None = None,
    adversarial: np.ndarray | None = None,
) -> AttackOutcome:
    """Robust accuracy under one attack (worst case over its restarts, counting clean mistakes as failures).

    Args:
      model_fn: float32 images [N, 32, 32, 3] in [0, 1] → logits [N, 10].
      spec: the attack.
      images: uint8 [N, 32, 32, 3]; labels: int [N]; clean_correct: bool [N] from `clean_evaluation` (or the
        survivors of a composite's earlier stages).
      batch_size: images per attack call; fixed_batch: the signature's fixed batch size or None.
      seed: the run's seed.
      progress: show a progress bar (with ETA).
      indices: attack only these examples, re-batched (a composite's survivors); None: every example. The
        others keep `clean_correct`.
      seed_name: what the per-batch seeds derive from (default: the attack's name).
      store, key: record every finished batch under `key/<batch>` and take finished ones from there (resume).
      strategy: run groups of batches data-parallel, one whole batch per replica (same numbers as one device).
      adversarial: a float32 [N, H, W, C] buffer: each example this call's batches break gets the restart's
        adversarial image that first broke it written there (batches taken from `store` write nothing).

    Returns:
      The outcome (its figures' examples only when `indices` is None).
    """
    n = len(images)
    order = np.arange(n) if indices is None else np.asarray(indices, np.int64)
    seed_name = seed_name or spec.name
    robust = clean_correct.copy()
    show = indices is None
    # The figures show the first images of the first batch.
    shown = to_float(images[: min(SHOWN_EXAMPLES, batch_size)] if show else images[:0])
    max_pert, seconds, cpu_seconds = 0.0, 0.0, 0.0
    slices = list(batch_slices(len(order), batch_size))
    todo = []
    for b, sl in enumerate(slices):
        record = store.load(f"{key}/{b:05d}") if store is not None else None
        if record is None:
            todo.append(b)
            continue
        robust[order[sl]] &= record["correct"]
        max_pert = max(max_pert, float(record["max_perturbation"]))
        seconds += float(record["seconds"])
        cpu_seconds += float(record["cpu_seconds"])
        if b == 0 and show:
            shown = record["shown"]
    bar = keras.utils.Progbar(len(order), stateful_metrics=["robust_acc"], unit_name="image") if progress else None
    done = len(order) - sum(slices[b].stop - slices[b].start for b in todo)
    if bar is not None and done:
        bar.update(done, values=[("robust_acc", float(np.mean(robust[order[:done]])))])
    trace_seconds = 0.0
    if todo:
        run, trace = _attack_step(model_fn, spec, fixed_batch, strategy, tuple(images.shape[1:]))
        start = time.perf_counter()
        trace()  # trace before the clock starts: images/s measures the attack, not tracing
        trace_seconds = time.perf_counter() - start
    group_size = strategy.num_replicas_in_sync if strategy is not None else 1
    for g in range(0, len(todo), group_size):
        group = todo[g : g + group_size]
        start, cpu_start = time.perf_counter(), time.process_time()
        inputs = []
        for b in group:
            idx = order[slices[b]]
            x = padded(to_float(images[idx]), fixed_batch)
            y = padded(labels[idx].astype(np.int64), fixed_batch)
            inputs.append((x, y))
        correct = {b: np.ones([slices[b].stop - slices[b].start], bool) for b in group}
        pert = dict.fromkeys(group, 0.0)
        first_shown = shown.copy()
        shown_final = np.zeros([len(shown)], bool)
        for r in range(spec.restarts):
            outs = run([(x, y, attack_seed(seed, seed_name, b, r)) for b, (x, y) in zip(group, inputs)])
            for b, (x_adv, ok, p) in zip(group, outs):
                k = len(correct[b])
                ok = ok[:k]
                if b == 0 and show:
                    # Show the restart that first fooled each shown image (else the last one).
                    take = ~shown_final
                    first_shown[take] = x_adv[: len(shown)][take]
                    shown_final |= ~ok[: len(shown)]
                if adversarial is not None:
                    first = correct[b] & ~ok  # broken by this restart, by no earlier one
                    adversarial[order[slices[b]][first]] = x_adv[:k][first]
                correct[b] &= ok
                pert[b] = max(pert[b], float(p))
        # One group's wall and CPU time, shared by its batches: per-batch records add up to the stage's time.
        elapsed, cpu = (time.perf_counter() - start) / len(group), (time.process_time() - cpu_start) / len(group)
        for b in group:
            if b == 0 and show:
                shown = first_shown
            robust[order[slices[b]]] &= correct[b]
            max_pert = max(max_pert, pert[b])
            seconds += elapsed
            cpu_seconds += cpu
            if store is not None:
                extra = {"shown": shown} if b == 0 and show else {}
                store.save(
                    f"{key}/{b:05d}",
                    correct=correct[b],
                    max_perturbation=pert[b],
                    seconds=elapsed,
                    cpu_seconds=cpu,
                    **extra,
                )
        if bar is not None:
            stop = slices[group[-1]].stop
            bar.update(stop, values=[("robust_acc", float(np.mean(robust[order[:stop]])))])
        check_stop()
    return AttackOutcome(
        spec, robust, seconds, cpu_seconds, trace_seconds, max_pert, shown.astype(np.float32), int(len(order))
    )


def masking_flags(
    accuracies: dict[str, float],
    num_examples: int,
    zero_gradient_fraction: float = 0.0,
    nonfinite_gradient_fraction: float = 0.0,
    *,
    standard_accuracy: float | None = None,
    worst_case_accuracy: float | None = None,
    gradient_free_breaks: dict[str, int] | None = None,
    randomness: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Signs of gradient masking: a stronger attack scoring higher than a weaker one, a gradient-free attack
    breaking what the gradient attacks could not, PGD-20 near clean accuracy while the worst case is far below
    it, or gradients zero / NaN.

    Args:
      accuracies: attack name → robust accuracy.
      num_examples: test examples (sets the tolerance).
      zero_gradient_fraction, nonfinite_gradient_fraction: from `clean_evaluation`.
      standard_accuracy, worst_case_accuracy: clean accuracy and the worst case over the attacks of PGD-20's
        threat model (its norm and radius: the evaluator leaves L2 attacks and other radii out).
      gradient_free_breaks: "composite/stage" → examples a gradient-free stage broke after the gradient stages.
      randomness: `randomness_check`'s answer (a randomised model is flagged: its deterministic-model numbers
        are no headline; AutoAttack's `rand` version is the one to run).

    Returns:
      One {"check", "message", ...} per sign found; empty when none.
    """
    tol = max(MASKING_TOLERANCE, MASKING_TOLERANCE_EXAMPLES / max(num_examples, 1))
    flags = []
    for stronger, weaker, what in MONOTONE_PAIRS:
        if stronger in accuracies and weaker in accuracies and accuracies[stronger] > accuracies[weaker] + tol:
            flags.append(
                {
                    "check": f"{stronger}<={weaker}",
                    "message": f"{what}: {stronger} {accuracies[stronger]:.4f} > {weaker} {accuracies[weaker]:.4f}",
                    "tolerance": tol,
                }
            )
    for stage, count in (gradient_free_breaks or {}).items():
        if count / max(num_examples, 1) > tol:
            flags.append(
                {
                    "check": f"{stage}_after_gradient_attacks",
                    "message": f"gradient-free {stage} broke {count} examples ({count / num_examples:.1%}) that "
                    "every gradient attack before it left standing",
                    "tolerance": tol,
                }
            )
    pgd = accuracies.get("pgd20")
    if pgd is not None and standard_accuracy is not None and worst_case_accuracy is not None:
        if pgd >= standard_accuracy - PGD_NEAR_CLEAN and worst_case_accuracy <= pgd - WORST_FAR_BELOW:
            flags.append(
                {
                    "check": "pgd20_near_clean_worst_case_far_below",
                    "message": f"PGD-20 {pgd:.4f} is near clean accuracy {standard_accuracy:.4f} while the worst "
                    f"case over every attack of its threat model is {worst_case_accuracy:.4f}",
                }
            )
    if zero_gradient_fraction > ZERO_GRADIENT_LIMIT:
        flags.append(
            {
                "check": "zero_gradients",
                "message": f"input gradients are exactly zero for {zero_gradient_fraction:.1%} of test images",
            }
        )
    if nonfinite_gradient_fraction > 0:
        flags.append(
            {
                "check": "nonfinite_gradients",
                "message": f"input gradients are NaN/Inf for {nonfinite_gradient_fraction:.1%} of test images",
            }
        )
    if randomness is not None and randomness["randomised"]:
        diff = randomness["max_output_difference"]
        flags.append(
            {
                "check": "randomised_model",
                "message": f"the model is randomised: {randomness['passes']} forward passes of the same inputs "
                f"differ (normalised outputs by up to {diff['clean']:.2g} clean, {diff['perturbed']:.2g} perturbed"
                f"{'; the number of correct predictions changes' if randomness['predictions_differ'] else ''}); "
                "numbers of attacks made for deterministic models (the standard AutoAttack) are not its headline: "
                "run AutoAttack's rand version (--autoattack_version=rand, version='rand')",
            }
        )
    for f in flags:
        logging.warning("possible gradient masking: %s", f["message"])
    return flags
