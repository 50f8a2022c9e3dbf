"""advss_tf from Python: AutoAttack and the other robustness evaluations of a model in memory, in one call.

    import advss_tf
    result = advss_tf.autoattack(model, x_test, y_test, epsilon=8 / 255)
    result.robust_accuracy, result.clean_accuracy, result.adversarial_images, result.robust, result.breaking_attack

`model` is a Keras model, a SavedModel (a path, or the object `tf.saved_model.load` returned) or any callable
float32 images [N, H, W, C] in [0, 1] → logits [N, K]; `x` NumPy, a tensor or a `tf.data.Dataset` of
(image, label) pairs. It is a thin door onto the evaluation core the evaluate binary also calls
(`evaluation.core.evaluate`: the same plan builder `config.attack_plan` and defaults, model opening, input checks,
attacks, seeds, survivors-only stages, worst case and checks), without the files: the binary adds the data sources,
resumable records and the written outputs. Every bad argument raises one `UsageError` with one sentence.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from advss_tf.attacks.registry import AUTOATTACK_VERSIONS, autoattack_composite
from advss_tf.config import DEFAULT_EPSILON, DEFAULT_SQUARE_QUERIES, DEFAULT_TARGETS, attack_plan
from advss_tf.errors import UsageError
from advss_tf.evaluation import core, worst_case
from advss_tf.evaluation.worst_case import outcome_name

VERSIONS = tuple(AUTOATTACK_VERSIONS)
NORMS = ("linf", "l2")


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
    targets: int = DEFAULT_TARGETS,
    square_queries: int = DEFAULT_SQUARE_QUERIES,
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
        values than the standard 1, 9 and 5,000 make the result's version "custom" (quick looks; not AutoAttack's
        number). `targets` must be at most K − 1 (a model with fewer than 10 classes: pass targets=K − 1), as in the
        binary.

    Returns:
      An `AutoAttackResult`. A randomised model (the randomness check) with version="standard" warns: use "rand".

    Raises:
      UsageError: bad input (images not in [0, 1] or of the wrong rank, labels out of range or of another length,
        fewer than 4 classes, more targets than K − 1, an unknown version or norm, ε out of range, a model that does
        not map the images to [N, K] finite scores).
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
    targets: int = DEFAULT_TARGETS,
    square_queries: int = DEFAULT_SQUARE_QUERIES,
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
    worst = run.worst_case
    details = {outcome_name(o): o.to_dict() for o in run.outcomes}
    return RobustnessResult(
        num_examples=len(run.labels),
        clean_accuracy=float(np.mean(run.clean["correct"])),
        robust_accuracy={k: d["accuracy"] for k, d in details.items()},
        worst_case_accuracy=worst["accuracy"],
        robust={outcome_name(o): o.robust.copy() for o in run.outcomes},
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
    worst_case: dict[str, Any]
    checks: dict[str, Any]
    adversarial: np.ndarray
    seconds: float


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise UsageError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    return norm


def _run(model, x, y, names, *, norm, epsilon, batch_size, seed, progress, restarts, targets, square_queries) -> _Run:
    """The Python door onto `evaluation.core`: checks the arguments' types, then the core's plan, model, inputs and
    evaluation (no files, no resume)."""
    start = time.perf_counter()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(seed, int | np.integer):
        raise UsageError(f"seed must be an integer, got {seed!r}")
    for what, value in (("restarts", restarts), ("targets", targets), ("square_queries", square_queries)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise UsageError(f"{what} must be a positive integer, got {value!r}")
    images, labels = core.as_arrays(x, y)
    eps = DEFAULT_EPSILON[norm] if epsilon is None else float(epsilon)
    plan = attack_plan(
        names, restarts=int(restarts), epsilons={norm: eps}, autoattack_norm=norm, targets=int(targets),
        square_queries=int(square_queries),
    )  # fmt: skip
    opened = core.open_model(model, images[: core.PROBE_IMAGES])
    run = core.evaluate(
        opened, images, labels, plan, door=core.PYTHON, seed=int(seed), batch_size=batch_size, progress=progress,
        keep_adversarial=True,
    )  # fmt: skip
    probability_outputs = opened.output_kind == "probabilities"
    checks = {"randomised": run.checks["randomness"]["randomised"], "probability_outputs": probability_outputs}
    checks.update(run.checks)
    if probability_outputs:
        checks["flags"] = [
            *run.checks["flags"],
            {
                "check": "probability_outputs",
                "message": "the model outputs probabilities, not logits: attacked through their logarithm",
            },
        ]
    seconds = time.perf_counter() - start
    return _Run(labels, eps, run.clean, run.outcomes, run.worst_case, checks, run.adversarial, seconds)


__all__ = ["AutoAttackResult", "RobustnessResult", "autoattack", "evaluate_robustness"]
