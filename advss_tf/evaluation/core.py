"""The one evaluation under every door: a model, images, labels and an attack plan → the clean results, each attack's
per-example outcome, the worst case and the checks.

Two doors open onto it: the Python API (`advss_tf.autoattack`, `advss_tf.evaluate_robustness`: arrays in memory,
a frozen result) and the evaluate binary (`evaluation.evaluator.run`), which adds only the data loading, the resume
records (`store`) and the files it writes — as RobustBench's CLI only calls `benchmark(..., to_disk=...)`. The plan
comes from the one plan builder (`config.attack_plan`) with the one set of defaults (`config.DEFAULT_*`); the model
is opened one way (`open_model`); the inputs are checked one way (`as_arrays`, `check_labels`, `check_class_count`);
a randomised model is warned about one way (a RuntimeWarning that names the door's way to the rand version).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from advss_tf.attacks.registry import AttackSpec, check_classes, components
from advss_tf.errors import UsageError
from advss_tf.evaluation import robustness, worst_case
from advss_tf.evaluation.records import PartialStore
from advss_tf.evaluation.worst_case import outcome_name
from advss_tf.serving import (
    Classifier,
    as_logits,
    classifier_from_saved_model,
    load_classifier,
    looks_like_probabilities,
)

PROBE_IMAGES = 8  # images the model is checked on when it is opened

Plan = list[tuple[str, list[AttackSpec]]]
Outcome = robustness.AttackOutcome | worst_case.CompositeOutcome


@dataclasses.dataclass(frozen=True)
class Door:
    """How a door names things in its messages: the setting of the target count, where the class count comes from,
    and the way to AutoAttack's rand version."""

    targets: str
    classes_of: str
    rand_version: str


CLI = Door(targets="--targets", classes_of="the data", rand_version="--autoattack_version=rand")
PYTHON = Door(
    targets="targets", classes_of="the model", rand_version="version='rand' (evaluate_robustness: 'autoattack_rand')"
)


@dataclasses.dataclass(frozen=True)
class OpenedModel:
    """A model opened to attack: call it on float32 images [N, H, W, C] in [0, 1] to get logits [N, K].

    Attributes:
      num_classes: K.
      output_kind: "logits", or "probabilities" (then the call gives log-probabilities).
      fixed_batch: the SavedModel signature's fixed batch size, or None when any batch size works.
      classifier: a SavedModel's `serving.Classifier` (it holds the loaded object, so the variables live as long as
        this does); None for a Keras model or a callable.
    """

    logits: Callable[[tf.Tensor], tf.Tensor]
    num_classes: int
    output_kind: str
    fixed_batch: int | None = None
    classifier: Classifier | None = None

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        return self.logits(images)

    def describe(self) -> dict[str, Any]:
        """The model's identity for results.json (a SavedModel's path, signature, keys and file hashes)."""
        return self.classifier.describe() if self.classifier is not None else {"output_kind": self.output_kind}

    def batch_size(self, requested: int) -> int:
        """The batch size attacks run with: the signature's fixed one when it has one, else `requested`."""
        if self.fixed_batch is not None and self.fixed_batch != requested:
            logging.info("the model takes batches of %d: using that batch size", self.fixed_batch)
        return self.fixed_batch or requested


@dataclasses.dataclass
class Evaluation:
    """What `evaluate` found.

    Attributes:
      clean: {"correct", "zero_gradient", "nonfinite_gradient"}: bool [N] each (`robustness.clean_evaluation`).
      outcomes: one per plan entry, in order.
      worst_case: results.json's `worst_case` section; per_example: the arrays of per_example.npz.
      checks: results.json's `gradient_masking` section (flags, gradient health, the randomness check).
      adversarial: float32 [N, H, W, C] (when asked for): the image that broke each broken example, else the clean.
      batch_size: the batch size the attacks ran with.
    """

    clean: dict[str, np.ndarray]
    outcomes: list[Outcome]
    worst_case: dict[str, Any]
    per_example: dict[str, np.ndarray]
    checks: dict[str, Any]
    adversarial: np.ndarray | None
    batch_size: int

    @property
    def clean_accuracy(self) -> float:
        return float(np.mean(self.clean["correct"])) if len(self.clean["correct"]) else 0.0


def open_model(model: Any, probe: np.ndarray, num_classes: int | None = None) -> OpenedModel:
    """The one way a model is opened: a SavedModel path, a loaded SavedModel, a Keras model or any callable float32
    images in [0, 1] → scores, checked on `probe`.

    Args:
      model: what to open.
      probe: a few float32 images [n, H, W, C] in [0, 1] (n ≥ 1) of the size the evaluation uses.
      num_classes: the class count the model must output (the test data's); None: any K ≥ 2.

    Raises:
      UsageError: a path that is no classifier SavedModel, an object of another kind, a model that fails on the
        probe or does not map it to [n, K] finite scores (K = `num_classes` when given).
    """
    probe = probe if len(probe) >= 2 else np.concatenate([probe, probe])
    if isinstance(model, str | os.PathLike):
        return _saved_model(load_classifier(os.fspath(model), probe, num_classes))
    if not isinstance(model, keras.Model | keras.layers.Layer) and getattr(model, "signatures", None):
        return _saved_model(classifier_from_saved_model(model, probe, None, num_classes))
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
    if num_classes is not None and scores.shape[1] != num_classes:
        raise UsageError(f"the model outputs {scores.shape[1]} classes but the test data has {num_classes}")
    if not np.all(np.isfinite(scores)):
        raise UsageError("the model gives non-finite outputs on the clean images")
    kind = "probabilities" if looks_like_probabilities(scores) else "logits"
    return OpenedModel(lambda images: as_logits(call(images), images, kind), scores.shape[1], kind)


def _saved_model(classifier: Classifier) -> OpenedModel:
    return OpenedModel(classifier, classifier.num_classes, classifier.output_kind, classifier.batch_size, classifier)


def as_arrays(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """float32 images [N, H, W, C] in [0, 1] and int64 labels [N] from arrays, tensors or a Dataset, checked.

    Raises:
      UsageError: no labels (or labels twice), images of another rank, dtype or range, labels of another length,
        not integers or negative.
    """
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


def check_labels(labels: np.ndarray, num_classes: int) -> None:
    """UsageError unless every label is in [0, `num_classes`)."""
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UsageError(
            f"labels must be in [0, {num_classes}) for a model with {num_classes} outputs, got {labels.max()}"
        )


def check_class_count(plan: Plan, num_classes: int, targets: int, door: Door = CLI) -> None:
    """UsageError unless every attack of `plan` is defined for `num_classes` classes and `targets` fits them: more
    targets than the K − 1 other classes are refused, in every door, with the same sentence."""
    for _, specs in plan:
        for spec in specs:
            check_classes(spec, num_classes, door.classes_of)
            if spec.targets is not None and targets > num_classes - 1:
                raise UsageError(
                    f"{door.targets}={targets} but {spec.name} can target at most {num_classes - 1} classes "
                    f"({door.classes_of}'s {num_classes} minus the true one); pass {door.targets}={num_classes - 1}"
                )


def evaluate(
    model: OpenedModel,
    images: np.ndarray,
    labels: np.ndarray,
    plan: Plan,
    *,
    door: Door,
    seed: int,
    batch_size: int,
    progress: bool,
    store: PartialStore | None = None,
    strategy: tf.distribute.Strategy | None = None,
    keep_adversarial: bool = False,
) -> Evaluation:
    """The evaluation: checks, the randomness check, the clean pass, every entry of `plan`, the worst case and the
    gradient-masking checks.

    Args:
      model: from `open_model`.
      images: uint8 [N, H, W, C], or float32 in [0, 1]; labels: int [N].
      plan: `config.attack_plan`'s.
      door: how messages name the settings.
      seed: every random start derives from it.
      batch_size: images per attack call (the signature's fixed one wins).
      progress: progress bars and printed lines (False: log lines only).
      store: the binary's per-batch records: finished units are taken from it, new ones written to it (resume).
      strategy: run the attacks data-parallel on it.
      keep_adversarial: collect the adversarial image of every broken example (the Python API's result).

    Raises:
      UsageError: labels out of range, an attack not defined for the class count, too many targets.
      robustness.EvaluationInterrupted: a watched signal arrived (the finished batches are in `store`).
    """
    check_labels(labels, model.num_classes)
    targets = next((s.targets for _, specs in plan for s in specs if s.targets is not None), 1)
    check_class_count(plan, model.num_classes, targets, door)
    batch_size = model.batch_size(batch_size)
    common = dict(batch_size=batch_size, fixed_batch=model.fixed_batch)
    randomness = check_randomness(model, plan, images, labels, seed=seed, **common)
    if randomness["randomised"] and not any(s.eot_samples > 1 for _, specs in plan for s in specs):
        warnings.warn(
            "the model is randomised (forward passes of the same inputs differ): the standard AutoAttack does not "
            f"give its robust accuracy; use {door.rand_version}",
            RuntimeWarning,
            stacklevel=3,
        )
    say = sayer(progress)
    clean = store.load("clean") if store is not None else None
    if clean is None:
        say(f"clean accuracy and gradient check on {len(images)} test images")
        clean = robustness.clean_evaluation(model, images, labels, progress=progress, **common)
        if store is not None:
            store.save("clean", **clean)
    adversarial = robustness.to_float(images).copy() if keep_adversarial else None
    outcomes = run_plan(
        model, plan, images, labels, clean["correct"], say=say, seed=seed, progress=progress, store=store,
        strategy=strategy, adversarial=adversarial, **common,
    )  # fmt: skip
    worst, per_example = worst_case.worst_case(clean["correct"], outcomes)
    checks = gradient_masking(clean, outcomes, worst, randomness)
    return Evaluation(clean, outcomes, worst, per_example, checks, adversarial, batch_size)


def run_plan(
    model_fn, plan: Plan, images: np.ndarray, labels: np.ndarray, clean_correct: np.ndarray, *, say, **run: Any
) -> list[Outcome]:
    """Every entry of `plan`: a composite's stages each on the survivors of the earlier ones
    (`worst_case.run_composite`), a single attack on every example (`robustness.run_attack`).

    Args:
      say: where one line per attack goes. **run: `run_attack`'s keyword arguments (seed, batch_size, ...).
    """
    outcomes: list[Outcome] = []
    for i, (name, specs) in enumerate(plan):
        spec = specs[0]
        budget = f"{spec.norm} ε={spec.to_dict()['epsilon_label']}, {spec.restarts} restart(s)"
        if len(specs) > 1 or components(name):
            say(f"attack {i + 1}/{len(plan)}: {name} — {' → '.join(s.name for s in specs)} ({budget})")
            outcome = worst_case.run_composite(model_fn, name, specs, images, labels, clean_correct, say=say, **run)
        else:
            say(f"attack {i + 1}/{len(plan)}: {name} — {spec.description} ({budget}, {spec.steps} steps)")
            outcome = robustness.run_attack(model_fn, spec, images, labels, clean_correct, key=f"attack/{name}", **run)
        logging.info("%s: robust accuracy %.4f (%.1f s)", name, outcome.accuracy, outcome.seconds)
        outcomes.append(outcome)
    return outcomes


def check_randomness(
    model_fn, plan: Plan, images: np.ndarray, labels: np.ndarray, *, seed: int, batch_size: int, fixed_batch: int | None
) -> dict[str, Any]:
    """`robustness.randomness_check` on the first batch, perturbed within the first attack's ball (L∞ 8/255 when
    no attack runs)."""
    first = next((specs[0] for _, specs in plan), None)
    eps, norm = (first.eps, first.norm) if first is not None else (8 / 255, "linf")
    k = min(len(images), fixed_batch or batch_size)
    return robustness.randomness_check(
        model_fn, images[:k], labels[:k], eps=eps, norm=norm, seed=seed, fixed_batch=fixed_batch
    )


def gradient_masking(
    clean: dict[str, np.ndarray], outcomes: list, worst: dict[str, Any], randomness: dict[str, Any] | None
) -> dict[str, Any]:
    """The `gradient_masking` section of results.json: the flags (`robustness.masking_flags`), the gradient
    health of the clean pass, and the randomness check."""
    n = len(clean["correct"])
    zero_fraction = float(np.mean(clean["zero_gradient"])) if n else 0.0
    nonfinite_fraction = float(np.mean(clean["nonfinite_gradient"])) if n else 0.0
    gradient_free = {}
    for o in outcomes:
        if isinstance(o, worst_case.CompositeOutcome):
            gradient_free.update(o.gradient_free_breaks())
    # PGD-20 is held against the worst case in its own threat model: an L2 attack or a larger radius is another.
    pgd20 = next((o for o in outcomes if outcome_name(o) == "pgd20"), None)
    pgd20_worst = worst["by_threat_model"][worst_case.threat_model(pgd20)]["accuracy"] if pgd20 else None
    flags = robustness.masking_flags(
        {outcome_name(o): o.accuracy for o in outcomes},
        n,
        zero_fraction,
        nonfinite_fraction,
        standard_accuracy=float(np.mean(clean["correct"])) if n else None,
        worst_case_accuracy=pgd20_worst,
        gradient_free_breaks=gradient_free,
        randomness=randomness,
    )
    return {
        "suspected": bool(flags),
        "flags": flags,
        "zero_gradient_fraction": zero_fraction,
        "nonfinite_gradient_fraction": nonfinite_fraction,
        "randomness": randomness,
    }


def sayer(progress: bool) -> Callable[[str], None]:
    """Where a door's one-line messages go: printed (with progress), else the log."""

    def say(line: str) -> None:
        if progress:
            print(line, flush=True)
        else:
            logging.info(line)

    return say


__all__ = [
    "CLI",
    "PYTHON",
    "Door",
    "Evaluation",
    "OpenedModel",
    "as_arrays",
    "check_class_count",
    "check_labels",
    "evaluate",
    "open_model",
]
