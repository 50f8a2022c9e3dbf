"""advss_tf from Python: AutoAttack and the other robustness evaluations of a model in memory, in one call.

    import advss_tf
    result = advss_tf.autoattack(model, x_test, y_test, epsilon=8 / 255)
    result.robust_accuracy, result.clean_accuracy, result.adversarial_images, result.robust, result.breaking_attack

`model` is a Keras model, a SavedModel (a path, or the object `tf.saved_model.load` returned) or any callable
float32 images [N, H, W, C] in [0, 1] → logits [N, K]; `x` NumPy, a tensor or a `tf.data.Dataset` of
(image, label) pairs. It is the evaluate binary's machinery (`evaluation.evaluator.run_plan`, the same attacks,
seeds, survivors-only stages, worst case and checks), without the files: the binary adds the data sources,
resumable records and the written outputs. Every bad argument raises one `UsageError` with one sentence.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from advss_tf.attacks.registry import (
    AUTOATTACK_VERSIONS,
    AttackSpec,
    autoattack_composite,
    check_classes,
    components,
    configure,
    parse_attacks,
    with_budgets,
)
from advss_tf.errors import UsageError
from advss_tf.evaluation import evaluator, robustness, worst_case
from advss_tf.evaluation.model import as_logits, classifier_from_saved_model, load_classifier, looks_like_probabilities

VERSIONS = tuple(AUTOATTACK_VERSIONS)
NORMS = ("linf", "l2")
DEFAULT_EPSILON = {"linf": 8 / 255, "l2": 0.5}
STANDARD_TARGETS = 9
STANDARD_SQUARE_QUERIES = 5000
_PROBE = 8


@dataclasses.dataclass(frozen=True)
class AutoAttackResult:
    """What `autoattack` found. Arrays are per example, in the order of the input.

    Attributes:
      attack: the composite that ran ("autoattack", "autoattack_l2", "autoattack_rand", "autoattack_rand_l2").
      version: "standard" or "rand" (or "custom" when a budget was changed: `changes` says what).
      norm, epsilon: the threat model (ε on the [0, 1] pixel scale).
      clean_accuracy, robust_accuracy: fractions of the examples.
      robust: bool [N], correct clean and after every stage.
      clean_correct: bool [N].
      adversarial_images: float32 [N, H, W, C]: where an attack broke the example, the image that broke it; else
        the clean image.
      breaking_attack: str [N]: the stage that broke each example ("apgd_ce", ...), "clean" for a clean mistake,
        "" where robust.
      accuracy_after_stage: robust accuracy after each stage, in order.
      checks: randomness (`randomised` and its details), probability outputs, zero / non-finite gradient fractions,
        and the flags the evaluate binary reports (`flags`).
      details: the results.json entry of the composite (stages, budgets, timings).
    """

    attack: str
    version: str
    changes: tuple[str, ...]
    norm: str
    epsilon: float
    num_examples: int
    clean_accuracy: float
    robust_accuracy: float
    robust: np.ndarray = dataclasses.field(repr=False)
    clean_correct: np.ndarray = dataclasses.field(repr=False)
    adversarial_images: np.ndarray = dataclasses.field(repr=False)
    breaking_attack: np.ndarray = dataclasses.field(repr=False)
    accuracy_after_stage: dict[str, float]
    checks: dict[str, Any]
    details: dict[str, Any] = dataclasses.field(repr=False)
    seed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field but the adversarial images; per-example arrays as lists."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "adversarial_images"}
        for key in ("robust", "clean_correct", "breaking_attack"):
            out[key] = out[key].tolist()
        out["changes"] = list(self.changes)
        return out


@dataclasses.dataclass(frozen=True)
class RobustnessResult:
    """What `evaluate_robustness` found: clean accuracy, each attack's robust accuracy, the worst case.

    Attributes:
      clean_accuracy: fraction of the examples.
      robust_accuracy: attack name → fraction (a composite: after its last stage).
      worst_case_accuracy: the headline threat model's worst case (correct clean and survives every attack of it).
      robust: attack name → bool [N].
      worst_case: the results.json `worst_case` section (per threat model, which attack broke what).
      checks: as `AutoAttackResult.checks`.
      details: attack name → its results.json entry.
    """

    num_examples: int
    clean_accuracy: float
    robust_accuracy: dict[str, float]
    worst_case_accuracy: float
    robust: dict[str, np.ndarray] = dataclasses.field(repr=False)
    worst_case: dict[str, Any] = dataclasses.field(repr=False)
    checks: dict[str, Any] = dataclasses.field(repr=False)
    details: dict[str, Any] = dataclasses.field(repr=False)
    seed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; per-example arrays as lists."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["robust"] = {k: v.tolist() for k, v in self.robust.items()}
        return out


def autoattack(
    model: Any,
    x: Any,
    y: Any = None,
    *,
    epsilon: float | None = None,
    norm: str = "linf",
    version: str = "standard",
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    restarts: int = 1,
    targets: int = STANDARD_TARGETS,
    square_queries: int = STANDARD_SQUARE_QUERIES,
) -> AutoAttackResult:
    """AutoAttack (Croce & Hein, ICML 2020) on `model`: the field's robust accuracy, as the evaluate binary runs it.

    version="standard": APGD-CE → APGD-T (9 targets) → FAB-T (9 targets) → Square (5,000 queries), 100 iterations
    each, every stage on the examples still standing. version="rand" (for a randomised model): APGD-CE → APGD-DLR,
    100 iterations, each gradient averaged over 20 forward passes (EOT). norm="l2" runs either in L2.

    Args:
      model: a Keras model, a SavedModel path or loaded SavedModel (a signature float32 [N, 32, 32, 3] → [N, 10]),
        or any callable float32 images in [0, 1] → logits. A model that normalises its inputs itself is fine; one
        that expects other inputs is wrapped: `lambda images: model((images - mean) / std)`.
      x: images [N, H, W, C], float in [0, 1] (NumPy or tensor), or a `tf.data.Dataset` of (image, label) pairs or
        batches (then `y` is None).
      y: integer labels [N] in [0, K).
      epsilon: the radius on the [0, 1] pixel scale (default 8/255 in L∞, 0.5 in L2).
      norm: "linf" or "l2".
      version: "standard" or "rand".
      batch_size: images per attack call.
      seed: every random start derives from it: the same seed, the same result.
      progress: progress bars and one line per stage (False: log lines only).
      restarts, targets, square_queries: the evaluate binary's --restarts, --targets, --square_queries: other
        values than the standard 1, 9 (the K − 1 other classes when K < 10) and 5,000 make the result's version
        "custom" (quick looks; not AutoAttack's number).

    Returns:
      An `AutoAttackResult`. A randomised model (the randomness check) with version="standard" warns: use "rand".

    Raises:
      UsageError: bad input (images not in [0, 1] or of the wrong rank, labels out of range or of another length,
        fewer than 4 classes, an unknown version or norm, ε out of range, a model that does not map the images to
        [N, K] finite scores).
    """
    if version not in VERSIONS:
        raise UsageError(f"unknown AutoAttack version {version!r}; valid: {', '.join(VERSIONS)}")
    name = autoattack_composite(version, _check_norm(norm))
    budgets = dict(restarts=restarts, targets=targets, square_queries=square_queries)
    run = _run(model, x, y, [name], norm=norm, epsilon=epsilon, batch_size=batch_size, seed=seed, progress=progress,
               **budgets)  # fmt: skip
    outcome = run.outcomes[0]
    entry = outcome.to_dict()
    breaking = np.where(run.clean["correct"], outcome.breaking_stage(), worst_case.CLEAN_MISTAKE).astype(str)
    if run.checks["randomised"] and version == "standard":
        warnings.warn(
            "the model is randomised (forward passes of the same inputs differ): the standard AutoAttack does not "
            "give its robust accuracy; use version='rand'",
            RuntimeWarning,
            stacklevel=2,
        )
    return AutoAttackResult(
        attack=name,
        version=entry["version"],
        changes=tuple(entry["changes"]),
        norm=norm,
        epsilon=run.epsilon,
        num_examples=len(run.labels),
        clean_accuracy=float(np.mean(run.clean["correct"])),
        robust_accuracy=outcome.accuracy,
        robust=outcome.robust.copy(),
        clean_correct=run.clean["correct"].copy(),
        adversarial_images=run.adversarial,
        breaking_attack=breaking,
        accuracy_after_stage=dict(entry["accuracy_after_stage"]),
        checks=run.checks,
        details=entry,
        seed=seed,
        seconds=run.seconds,
    )


def evaluate_robustness(
    model: Any,
    x: Any,
    y: Any = None,
    *,
    attacks: tuple[str, ...] | list[str] = ("pgd20",),
    epsilon: float | None = None,
    norm: str = "linf",
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    restarts: int = 1,
    targets: int = STANDARD_TARGETS,
    square_queries: int = STANDARD_SQUARE_QUERIES,
) -> RobustnessResult:
    """Clean accuracy, robust accuracy under each of `attacks` and the worst case over them: `evaluate
    --attacks=...` from Python (the same names: pgd20, fgsm, pgd100, cw_linf, apgd_ce, ..., autoattack, a+b
    chains; 'all' for the unforeseen set).

    The attacks of `norm` run at `epsilon` (default 8/255 in L∞, 0.5 in L2); the others at their registry radius
    (pgd20_eps16: 16/255). Other arguments, the result's checks and the errors as `autoattack`.
    """
    if isinstance(attacks, str):
        attacks = (attacks,)
    run = _run(
        model, x, y, list(attacks), norm=_check_norm(norm), epsilon=epsilon, batch_size=batch_size, seed=seed,
        progress=progress, restarts=restarts, targets=targets, square_queries=square_queries,
    )  # fmt: skip
    worst, _ = worst_case.worst_case(run.clean["correct"], run.outcomes)
    details = {_name(o): o.to_dict() for o in run.outcomes}
    return RobustnessResult(
        num_examples=len(run.labels),
        clean_accuracy=float(np.mean(run.clean["correct"])),
        robust_accuracy={k: d["accuracy"] for k, d in details.items()},
        worst_case_accuracy=worst["accuracy"],
        robust={_name(o): o.robust.copy() for o in run.outcomes},
        worst_case=worst,
        checks=run.checks,
        details=details,
        seed=seed,
        seconds=run.seconds,
    )


@dataclasses.dataclass
class _Run:
    labels: np.ndarray
    epsilon: float
    clean: dict[str, np.ndarray]
    outcomes: list
    checks: dict[str, Any]
    adversarial: np.ndarray
    seconds: float


def _name(outcome) -> str:
    return outcome.name if isinstance(outcome, worst_case.CompositeOutcome) else outcome.spec.name


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise UsageError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    return norm


def _run(model, x, y, names, *, norm, epsilon, batch_size, seed, progress, restarts, targets, square_queries) -> _Run:
    """Checks every input, then the evaluate binary's clean pass, randomness check and attack plan."""
    start = time.perf_counter()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(seed, int | np.integer):
        raise UsageError(f"seed must be an integer, got {seed!r}")
    for what, value in (("restarts", restarts), ("targets", targets), ("square_queries", square_queries)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise UsageError(f"{what} must be a positive integer, got {value!r}")
    images, labels = _arrays(x, y)
    eps = DEFAULT_EPSILON[norm] if epsilon is None else float(epsilon)
    limit = 1.0 if norm == "linf" else float(np.sqrt(np.prod(images.shape[1:])))
    if not 0.0 < eps <= limit:
        raise UsageError(f"{norm} epsilon must be in (0, {limit:g}] on the [0, 1] pixel scale, got {epsilon}")
    model_fn, fixed_batch, probability_outputs, num_classes = _model_fn(model, images[:_PROBE])
    if labels.max() >= num_classes:
        raise UsageError(
            f"labels must be in [0, {num_classes}) for a model with {num_classes} outputs, got {labels.max()}"
        )
    plan = _plan(names, norm, eps, num_classes, restarts, targets, square_queries)
    if fixed_batch is not None:
        batch_size = fixed_batch
    say = print if progress else logging.info
    common = dict(batch_size=batch_size, fixed_batch=fixed_batch)
    randomness = evaluator.check_randomness(model_fn, plan, images, labels, seed=seed, **common)
    clean = robustness.clean_evaluation(model_fn, images, labels, progress=progress, **common)
    adversarial = images.copy()
    outcomes = evaluator.run_plan(
        model_fn, plan, images, labels, clean["correct"], say=say, seed=seed, progress=progress,
        adversarial=adversarial, **common,
    )  # fmt: skip
    worst, _ = worst_case.worst_case(clean["correct"], outcomes)
    masking = evaluator.gradient_masking(clean, outcomes, worst, randomness)
    checks = {
        "randomised": randomness["randomised"],
        "probability_outputs": probability_outputs,
        **masking,
    }
    if probability_outputs:
        checks["flags"] = [
            *masking["flags"],
            {
                "check": "probability_outputs",
                "message": "the model outputs probabilities, not logits: attacked through their logarithm",
            },
        ]
    return _Run(labels, eps, clean, outcomes, checks, adversarial, time.perf_counter() - start)


def _plan(
    names: list[str], norm: str, eps: float, num_classes: int, restarts: int, targets: int, square_queries: int
) -> list[tuple[str, list[AttackSpec]]]:
    """(name, specs) per attack, as `EvaluateConfig.attack_plan`: `norm`'s attacks at `eps`, targeted attacks on
    min(`targets`, K − 1) targets, Square with `square_queries`; DLR-based attacks need K ≥ 4."""
    budget = "linf" if norm == "linf" else "l2"
    plan = []
    for name in parse_attacks(names, autoattack_norm=norm):
        specs = configure(components(name) or (name,), restarts=restarts, epsilons={budget: eps}, autoattack_norm=norm)
        out = []
        for spec in specs:
            check_classes(spec, num_classes, "the model")
            out.append(with_budgets(spec, targets=min(targets, num_classes - 1), square_queries=square_queries))
        plan.append((name, out))
    return plan


def _arrays(x, y) -> tuple[np.ndarray, np.ndarray]:
    """float32 images [N, H, W, C] in [0, 1] and int64 labels [N] from arrays, tensors or a Dataset (checked)."""
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise UsageError("with a tf.data.Dataset give the labels inside it ((image, label) pairs), not as y")
        xs, ys = [], []
        for element in x.as_numpy_iterator():
            if not isinstance(element, tuple) or len(element) != 2:
                raise UsageError("the dataset must yield (image, label) pairs or batches of them")
            image, label = np.asarray(element[0]), np.asarray(element[1])
            xs.append(image[None] if image.ndim == 3 else image)
            ys.append(label.reshape(-1))
        if not xs:
            raise UsageError("the dataset is empty")
        images, labels = np.concatenate(xs), np.concatenate(ys)
    else:
        if y is None:
            raise UsageError("give the labels y (or a tf.data.Dataset of (image, label) pairs as x)")
        images, labels = np.asarray(x), np.asarray(y)
    if images.ndim != 4:
        raise UsageError(f"images must be [N, height, width, channels], got shape {list(images.shape)}")
    if images.dtype == np.uint8:
        raise UsageError("images are uint8: give float images in [0, 1] (x / 255)")
    if not np.issubdtype(images.dtype, np.floating):
        raise UsageError(f"images must be floats in [0, 1], got dtype {images.dtype}")
    images = images.astype(np.float32)
    if not len(images):
        raise UsageError("no images")
    if not np.all(np.isfinite(images)) or images.min() < 0.0 or images.max() > 1.0:
        raise UsageError(
            f"images must lie in [0, 1] (got values in [{np.nanmin(images):g}, {np.nanmax(images):g}]); wrap a model "
            "that takes another range so that it takes [0, 1] images"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise UsageError(f"labels must be [N] = [{len(images)}] integers, got shape {list(labels.shape)}")
    if not (np.issubdtype(labels.dtype, np.integer) or np.all(np.mod(labels, 1) == 0)):
        raise UsageError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise UsageError(f"labels must be >= 0, got {labels.min()}")
    return images, labels


def _model_fn(model, probe: np.ndarray):
    """(images → logits, fixed batch size or None, whether it outputs probabilities, class count K), checked on
    `probe`."""
    if isinstance(model, str | os.PathLike):
        classifier = load_classifier(os.fspath(model), _probe_images(probe), num_classes=None)
        return classifier, classifier.batch_size, classifier.output_kind == "probabilities", _classes(classifier, probe)
    if not isinstance(model, keras.Model | keras.layers.Layer) and getattr(model, "signatures", None):
        # A loaded SavedModel: the Classifier holds the object, so its variables live as long as the attack runs.
        classifier = classifier_from_saved_model(model, _probe_images(probe), num_classes=None)
        return classifier, classifier.batch_size, classifier.output_kind == "probabilities", _classes(classifier, probe)
    if isinstance(model, keras.Model | keras.layers.Layer):
        call = lambda images: model(images, training=False)  # noqa: E731
    elif callable(model):
        call = model
    else:
        raise UsageError(f"model must be a Keras model, a SavedModel (path or loaded) or a callable, got {type(model)}")
    try:
        scores = np.asarray(call(tf.constant(probe)))
    except Exception as e:  # the user's model: any error type
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"the model failed on {len(probe)} of the images: {first[:200]}") from e
    if scores.ndim != 2 or scores.shape[0] != len(probe) or scores.shape[1] < 2:
        raise UsageError(f"the model must map [N, H, W, C] images to [N, K ≥ 2] logits, got {list(scores.shape)}")
    if not np.all(np.isfinite(scores)):
        raise UsageError("the model gives non-finite outputs on the clean images")
    kind = "probabilities" if looks_like_probabilities(scores) else "logits"
    return (lambda images: as_logits(call(images), images, kind)), None, kind == "probabilities", scores.shape[1]


def _probe_images(probe: np.ndarray) -> np.ndarray:
    return probe if len(probe) >= 2 else np.concatenate([probe, probe])


def _classes(classifier, probe: np.ndarray) -> int:
    return int(classifier(tf.constant(robustness.padded(probe, classifier.batch_size))).shape[-1])


__all__ = ["AutoAttackResult", "RobustnessResult", "autoattack", "evaluate_robustness"]
