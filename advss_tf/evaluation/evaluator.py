"""A whole evaluation: test data → classifier SavedModel → clean, attacks, CIFAR-10-C → results.json + report.

Everything that can be wrong with the input (flags, model, test data, CIFAR-10-C source, an existing result,
another evaluation's partial results) is checked before the first attack, so bad input costs seconds and leaves
nothing behind. Every finished batch is recorded under <output_dir>/partial/ (`records`), so the same command
after SIGTERM, Ctrl-C or a crash continues where it stopped with the numbers of an uninterrupted run. The outputs
are written last: figures, TensorBoard scalars, report.md, per_example.npz, model_card.json, cifar10c.csv, and
results.json (atomically, at the very end); then the partial records are removed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import time
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from advss_tf import export, summaries, workspace
from advss_tf.attacks.registry import (
    DEFAULT_ATTACKS,
    AttackSpec,
    autoattack_composite,
    check_classes,
    components,
    configure,
    parse_attacks,
    with_budgets,
)
from advss_tf.config import versions
from advss_tf.corruptions.cifar10c import HEADLINE_CORRUPTIONS, SEVERITIES
from advss_tf.corruptions.sources import CIFAR10C_SOURCES, load_cifar10c
from advss_tf.data import datasets
from advss_tf.errors import UsageError
from advss_tf.evaluation import corruption, report, robustness, worst_case
from advss_tf.evaluation.model import default_model_name, load_classifier, model_hashes
from advss_tf.evaluation.records import PartialStore, write_text
from advss_tf.training.loop import SignalGuard
from advss_tf.training.strategy import make_strategy

NO_CIFAR10C = "none"
SCHEMA_VERSION = 3
REPORT = "report.md"
CIFAR10C_CSV = "cifar10c.csv"
EVAL_STRATEGIES = ("auto", "mirrored", "one_device")
DEFAULT_TARGETS = 9  # AutoAttack's standard version: the top 9 non-true classes
DEFAULT_SQUARE_QUERIES = 5000
# Settings that change no number: left out of the identity partial results are matched by.
_NOT_IDENTITY = ("model", "model_name", "strategy", "num_cpu_devices")
FIGURES = "figures"
TENSORBOARD_RUN = os.path.join(workspace.TENSORBOARD, "evaluate")
EXAMPLES_FIGURE = "adversarial_examples.png"
HEATMAP_FIGURE = "cifar10c_heatmap.png"
_PROBE_IMAGES = 8


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Everything an evaluation depends on; ε on the [0, 1] pixel scale."""

    model: str
    output_dir: str | None = None  # None: default_output_dir(model, model_name)
    model_name: str | None = None
    data: datasets.DataSource = datasets.DataSource()
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    restarts: int = 1
    linf_epsilon: float = 8 / 255
    linf_epsilon_large: float = 16 / 255
    l2_epsilon: float = 0.5
    autoattack_norm: str = "linf"  # which AutoAttack `autoattack` names: linf (autoattack) or l2 (autoattack_l2)
    autoattack_version: str = "standard"  # standard, or rand (randomised models: APGD-CE, APGD-DLR with EOT)
    batch_size: int = 128
    max_examples: int = 0  # 0: the whole test set
    cifar10c_source: str = NO_CIFAR10C
    cifar10c_dir: str | None = None
    corruptions: tuple[str, ...] = HEADLINE_CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES
    seed: int = 0
    targets: int = DEFAULT_TARGETS
    square_queries: int = DEFAULT_SQUARE_QUERIES
    strategy: str = "auto"
    num_cpu_devices: int = 1
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self):
        if self.output_dir is None:
            object.__setattr__(self, "output_dir", default_output_dir(self.model, self.model_name))
        if self.targets < 1:  # the upper bound is the data's class count - 1: `check_class_count`
            raise UsageError(f"--targets must be >= 1 (and below the model's class count), got {self.targets}")
        if self.square_queries < 1:
            raise UsageError(f"--square_queries must be >= 1, got {self.square_queries}")
        if self.strategy not in EVAL_STRATEGIES:
            raise UsageError(f"unknown strategy {self.strategy!r}; valid: {', '.join(EVAL_STRATEGIES)}")
        if self.batch_size < 1:
            raise UsageError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.max_examples < 0:
            raise UsageError(f"--max_examples must be >= 0 (0: all), got {self.max_examples}")
        if self.cifar10c_source not in (NO_CIFAR10C, *CIFAR10C_SOURCES):
            valid = ", ".join((NO_CIFAR10C, *CIFAR10C_SOURCES))
            raise UsageError(f"unknown CIFAR-10-C source {self.cifar10c_source!r}; valid: {valid}")
        autoattack_composite(self.autoattack_version, self.autoattack_norm)  # validates both
        self.attack_specs()  # validates names, radii and restarts
        # Normalised in place ('all' → names, "5" → 5): results.json records what actually ran.
        attacks = parse_attacks(self.attacks, self.autoattack_norm, self.autoattack_version)
        object.__setattr__(self, "attacks", tuple(attacks))
        object.__setattr__(self, "corruptions", corruption.parse_corruptions(self.corruptions))
        object.__setattr__(self, "severities", corruption.parse_severities(self.severities))

    def attack_specs(self) -> list[AttackSpec]:
        """Every single attack to run, composites' components included, in order."""
        return [spec for _, specs in self.attack_plan() for spec in specs]

    def attack_plan(self) -> list[tuple[str, list[AttackSpec]]]:
        """(name, specs) per `--attacks` entry: one spec for an attack, the stages in order for a composite."""
        epsilons = {"linf": self.linf_epsilon, "linf_large": self.linf_epsilon_large, "l2": self.l2_epsilon}
        plan = []
        for name in parse_attacks(self.attacks, self.autoattack_norm, self.autoattack_version):
            names = components(name) or (name,)
            specs = configure(
                names,
                restarts=self.restarts,
                epsilons=epsilons,
                autoattack_norm=self.autoattack_norm,
                autoattack_version=self.autoattack_version,
            )
            plan.append((name, [self._budget(spec) for spec in specs]))
        return plan

    def _budget(self, spec: AttackSpec) -> AttackSpec:
        return with_budgets(spec, targets=self.targets, square_queries=self.square_queries)

    def settings(self) -> dict[str, Any]:
        """The settings results.json records (output location and verbosity left out)."""
        d = dataclasses.asdict(self)
        for k in ("output_dir", "overwrite", "quiet"):
            d.pop(k)
        return d

    def identity(self, model_ids: dict[str, str], batch_size: int) -> dict[str, Any]:
        """What partial results must match to be resumed: the model's hashes and every setting that changes a
        number (the batch size actually used included; the strategy not: it changes no number)."""
        settings = {k: v for k, v in self.settings().items() if k not in _NOT_IDENTITY}
        return {"schema_version": SCHEMA_VERSION, "model": model_ids, "settings": settings, "batch_size": batch_size}


def default_output_dir(model: str, model_name: str | None = None) -> str:
    """runs/<name>_eval, <name> the model's label (`--model_name`, or the run directory of <run>/export/<x>)."""
    return os.path.join("runs", f"{model_name or default_model_name(model)}_eval")


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuses an output directory that already holds results (unless `overwrite`) or is a file."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"--output_dir {output_dir} exists and is not a directory")
    existing = os.path.join(output_dir, workspace.RESULTS)
    if os.path.exists(existing) and not overwrite:
        raise UsageError(f"{existing} already exists; use another --output_dir or pass --overwrite")


def load_test_set(cfg: EvaluateConfig) -> tuple[np.ndarray, np.ndarray, datasets.DatasetInfo]:
    """The test images (uint8), labels and what they hold, cut to `max_examples`; an empty or unlabelled source is a
    UsageError."""
    split = datasets.load(cfg.data, "test")
    datasets.require_labelled(split, cfg.data, "evaluation")
    images, labels = split.images, split.labels
    if cfg.max_examples:
        images, labels = images[: cfg.max_examples], labels[: cfg.max_examples]
    if not len(images):
        raise UsageError(f"the test set of {datasets.describe(cfg.data)} is empty")
    return images, labels, split.info


def check_class_count(plan: list[tuple[str, list[AttackSpec]]], num_classes: int, targets: int) -> None:
    """UsageError unless every attack of `plan` is defined for `num_classes` classes and --targets fits them."""
    for _, specs in plan:
        for spec in specs:
            check_classes(spec, num_classes)
            if spec.targets is not None and targets > num_classes - 1:
                raise UsageError(
                    f"--targets={targets} but {spec.name} can target at most {num_classes - 1} classes (the data's "
                    f"{num_classes} minus the true one); pass --targets={num_classes - 1}"
                )


def check_corruption_data(cfg: EvaluateConfig, info: datasets.DatasetInfo) -> None:
    """UsageError unless the CIFAR-10-C source fits the test data: 32x32 images (the generator's constants are
    CIFAR's), and TFDS's cifar10_corrupted only for CIFAR-10."""
    if tuple(info.image_shape[:2]) != (32, 32):
        raise UsageError(
            f"--cifar10c_source={cfg.cifar10c_source}: the CIFAR-10-C corruptions are defined for 32x32 images; "
            f"{info.title} images are {info.image_shape[0]}x{info.image_shape[1]}"
        )
    if cfg.cifar10c_source == "tfds" and info.name != "cifar10":
        raise UsageError(
            f"--cifar10c_source=tfds reads TFDS cifar10_corrupted, CIFAR-10's; for {info.title} use "
            "--cifar10c_source=generate or npy (e.g. the official CIFAR-100-C folder)"
        )


def _check_cifar10c_source(cfg: EvaluateConfig, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    # One example of the first set: a missing folder or an unprepared TFDS fails now, not after hours of attacks.
    load_cifar10c(
        cfg.cifar10c_source,
        cfg.corruptions[0],
        cfg.severities[0],
        data_dir=cfg.cifar10c_dir,
        tfds_data_dir=cfg.data.tfds_data_dir,
        clean_images=images[:1],
        clean_labels=labels[:1],
        seed=cfg.seed,
        max_examples=1,
        num_classes=num_classes,
    )


def run(
    cfg: EvaluateConfig, command: list[str] | None = None, strategy: tf.distribute.Strategy | None = None
) -> dict[str, Any]:
    """Runs the evaluation `cfg` describes and writes its outputs; returns the results.json contents.

    Args:
      cfg: the evaluation.
      command: the command line results.json records.
      strategy: run the attacks data-parallel on it (default: the one `cfg.strategy` names).

    Raises:
      UsageError: bad input (found before any attack runs).
      robustness.EvaluationInterrupted: SIGTERM/SIGINT; the finished batches are kept for the next run.
    """
    start = time.perf_counter()
    plan = cfg.attack_plan()
    if strategy is None:  # first: splitting the CPU into devices must precede TensorFlow's first op
        strategy = make_strategy(cfg.strategy, cfg.num_cpu_devices)
    check_output_dir(cfg.output_dir, cfg.overwrite)
    images, labels, data_info = load_test_set(cfg)
    check_class_count(plan, data_info.num_classes, cfg.targets)
    if cfg.cifar10c_source != NO_CIFAR10C:
        check_corruption_data(cfg, data_info)
    classifier = load_classifier(cfg.model, robustness.to_float(images[:_PROBE_IMAGES]), data_info.num_classes)
    batch_size = cfg.batch_size
    if classifier.batch_size is not None and classifier.batch_size != batch_size:
        logging.info(
            "signature %s takes batches of %d: using that batch size", classifier.signature, classifier.batch_size
        )
        batch_size = classifier.batch_size
    if cfg.cifar10c_source != NO_CIFAR10C:
        _check_cifar10c_source(cfg, images, labels, data_info.num_classes)
    store = PartialStore(cfg.output_dir, cfg.identity(model_hashes(cfg.model), batch_size))
    resuming = store.check(cfg.overwrite)
    progress = not cfg.quiet
    common = dict(batch_size=batch_size, fixed_batch=classifier.batch_size)
    store.open(cfg.overwrite and not resuming)  # the first thing written: every input check has passed
    if resuming:
        _say(progress, f"continuing the evaluation recorded in {store.folder}")
    randomness = check_randomness(classifier, plan, images, labels, seed=cfg.seed, **common)
    if randomness["randomised"]:
        logging.warning(
            "the model is randomised (forward passes of the same inputs differ): AutoAttack's standard version "
            "does not give its robust accuracy; --autoattack_version=rand does"
        )
    with SignalGuard() as guard:
        robustness.watch_signals(guard)
        try:
            clean, outcomes, cifar10c = _evaluate(
                cfg, plan, classifier, images, labels, store, strategy, common, data_info.num_classes
            )
        finally:
            robustness.watch_signals(None)
    n = len(images)
    standard_accuracy = float(np.mean(clean["correct"]))
    worst, per_example = worst_case.worst_case(clean["correct"], outcomes)
    masking = gradient_masking(clean, outcomes, worst, randomness)

    results = {
        "schema_version": SCHEMA_VERSION,
        "model": {"name": cfg.model_name or default_model_name(cfg.model), **classifier.describe(), **_trained_by(cfg)},
        "data": {
            "name": data_info.name,
            "title": data_info.title,
            "num_classes": data_info.num_classes,
            "image_shape": list(data_info.image_shape),
            "dataset": cfg.data.source,
            "data_dir": cfg.data.data_dir,
            "tfds_data_dir": cfg.data.tfds_data_dir,
            "split": "test",
            "num_examples": n,
        },
        "num_examples": n,
        "standard_accuracy": standard_accuracy,
        "robust_accuracy": {_outcome_name(o): o.to_dict() for o in outcomes},
        "worst_case": worst,
        "gradient_masking": masking,
        "cifar10c": cifar10c,
        "seed": cfg.seed,
        "batch_size": batch_size,
        "replicas": strategy.num_replicas_in_sync,
        "resumed_units": store.resumed_units,
        "settings": cfg.settings(),
        "command": command,
        "versions": versions(),
        "wall_time_sec": 0.0,
    }
    out = cfg.output_dir
    figures = _write_figures(out, results, classifier, images, labels, outcomes, data_info.class_names)
    results["figures"] = figures
    results["per_example"] = worst_case.PER_EXAMPLE
    results["model_card"] = worst_case.MODEL_CARD
    worst_case.write_per_example(os.path.join(out, worst_case.PER_EXAMPLE), labels, per_example)
    workspace.write_json(os.path.join(out, worst_case.MODEL_CARD), worst_case.model_card(results, _export_info(cfg)))
    if cifar10c:
        corruption.write_csv(os.path.join(out, CIFAR10C_CSV), cifar10c)
        results["cifar10c_csv"] = CIFAR10C_CSV
    results["wall_time_sec"] = time.perf_counter() - start
    text = report.markdown_report(results)
    _write_tensorboard(out, results, outcomes, images, text)
    write_text(os.path.join(out, REPORT), text)
    workspace.write_json(os.path.join(out, workspace.RESULTS), results)
    store.remove()
    print(text)
    print(f"results: {os.path.join(out, workspace.RESULTS)} (report.md, model card, per-example outcomes in {out})")
    return results


def check_randomness(
    model_fn, plan, images: np.ndarray, labels: np.ndarray, *, seed: int, batch_size: int, fixed_batch: int | None
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
    pgd20 = next((o for o in outcomes if _outcome_name(o) == "pgd20"), None)
    pgd20_worst = worst["by_threat_model"][worst_case.threat_model(pgd20)]["accuracy"] if pgd20 else None
    flags = robustness.masking_flags(
        {_outcome_name(o): o.accuracy for o in outcomes},
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


def run_plan(
    model_fn,
    plan: list[tuple[str, list[AttackSpec]]],
    images: np.ndarray,
    labels: np.ndarray,
    clean_correct: np.ndarray,
    *,
    say,
    **run: Any,
) -> list[robustness.AttackOutcome | worst_case.CompositeOutcome]:
    """Every entry of `plan` (`EvaluateConfig.attack_plan`): a composite's stages each on the survivors of the
    earlier ones (`worst_case.run_composite`), a single attack on every example (`robustness.run_attack`).

    Args:
      say: where one line per attack goes. **run: `run_attack`'s keyword arguments (seed, batch_size, ...).
    """
    outcomes: list[robustness.AttackOutcome | worst_case.CompositeOutcome] = []
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


def _evaluate(cfg, plan, classifier, images, labels, store, strategy, common, num_classes=10):
    """Clean accuracy, every attack and CIFAR-10-C, each unit taken from `store` when an earlier run finished it."""
    progress = not cfg.quiet
    clean = store.load("clean")
    if clean is None:
        _say(progress, f"clean accuracy and gradient check on {len(images)} test images")
        clean = robustness.clean_evaluation(classifier, images, labels, progress=progress, **common)
        store.save("clean", **clean)
    say = functools.partial(_say, progress)
    outcomes = run_plan(
        classifier,
        plan,
        images,
        labels,
        clean["correct"],
        say=say,
        seed=cfg.seed,
        progress=progress,
        store=store,
        strategy=strategy,
        **common,
    )
    cifar10c = None
    if cfg.cifar10c_source != NO_CIFAR10C:
        say(
            f"CIFAR-10-C ({cfg.cifar10c_source}): {len(cfg.corruptions)} corruptions × {len(cfg.severities)} severities"
        )
        cifar10c = corruption.evaluate_cifar10c(
            classifier,
            source=cfg.cifar10c_source,
            corruptions=cfg.corruptions,
            severities=cfg.severities,
            data_dir=cfg.cifar10c_dir,
            tfds_data_dir=cfg.data.tfds_data_dir,
            clean_images=images,
            clean_labels=labels,
            seed=cfg.seed,
            max_examples=cfg.max_examples or None,
            progress=progress,
            store=store,
            num_classes=num_classes,
            **common,
        )
    return clean, outcomes, cifar10c


def _outcome_name(outcome) -> str:
    return outcome.name if isinstance(outcome, worst_case.CompositeOutcome) else outcome.spec.name


def _export_info(cfg: EvaluateConfig) -> dict[str, Any] | None:
    try:
        return export.read_info(cfg.model)
    except (UsageError, OSError, ValueError):
        return None  # a third party's SavedModel: no advss_tf description


def _trained_by(cfg: EvaluateConfig) -> dict[str, Any]:
    """Who trained an imported model (advss_tf.import_torch records it), for results.json and the report."""
    imported = (_export_info(cfg) or {}).get("imported")
    if not isinstance(imported, dict):
        return {}
    return {
        "trained_by": imported.get("trained_by"),
        "imported_from": [s.get("file") for s in imported.get("sources", [])],
    }


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, flush=True)
    else:
        logging.info(line)


def _shown_outcome(outcomes: list) -> robustness.AttackOutcome | None:
    singles = [o for o in outcomes if isinstance(o, robustness.AttackOutcome)]
    by_name = {o.spec.name: o for o in singles}
    return by_name.get("pgd20") or (singles[0] if singles else None)


def _write_figures(output_dir, results, classifier, images, labels, outcomes, class_names) -> dict[str, str]:
    """The adversarial-examples grid and the CIFAR-10-C heat map; returns {figure: path relative to output_dir}."""
    written = {}
    folder = os.path.join(output_dir, FIGURES)
    shown = _shown_outcome(outcomes)
    if shown is not None and len(shown.shown_adversarial):
        k = len(shown.shown_adversarial)
        clean = robustness.to_float(images[:k])
        names = list(class_names)

        def predicted(x):
            return [names[i] for i in np.argmax(classifier(tf.constant(x)).numpy(), -1)]

        true = [names[i] for i in labels[:k]]
        spec = shown.spec.to_dict()
        report.plot_adversarial_examples(
            clean,
            shown.shown_adversarial,
            os.path.join(folder, EXAMPLES_FIGURE),
            title=f"{results['model']['name']}: {spec['name']} ({report.norm_name(spec['norm'])} ε={spec['epsilon_label']})",
            clean_labels=[f"{p} (true: {t})" for p, t in zip(predicted(clean), true)],
            adversarial_labels=predicted(shown.shown_adversarial),
        )
        written["adversarial_examples"] = os.path.join(FIGURES, EXAMPLES_FIGURE)
    if results["cifar10c"]:
        report.plot_cifar10c_heatmap(results, os.path.join(folder, HEATMAP_FIGURE))
        written["cifar10c_heatmap"] = os.path.join(FIGURES, HEATMAP_FIGURE)
    return written


def _write_tensorboard(output_dir, results, outcomes, images, text) -> None:
    """Scalars (clean, per-attack robust accuracy and images/s, CIFAR-10-C metrics), the example grid, the report."""
    logdir = os.path.join(output_dir, TENSORBOARD_RUN)
    shutil.rmtree(logdir, ignore_errors=True)  # an --overwrite run must not add a second point at step 0
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default(step=0):
        tf.summary.scalar("evaluate/standard_accuracy", results["standard_accuracy"])
        for name, r in results["robust_accuracy"].items():
            tf.summary.scalar(f"evaluate/robust_accuracy/{name}", r["accuracy"])
            if r["images_per_sec"] is not None:
                tf.summary.scalar(f"evaluate/images_per_sec/{name}", r["images_per_sec"])
        for key, value in ((results["cifar10c"] or {}).get("metrics") or {}).items():
            tf.summary.scalar(f"evaluate/{key}", value)
        shown = _shown_outcome(outcomes)
        if shown is not None and len(shown.shown_adversarial):
            clean = robustness.to_float(images[: len(shown.shown_adversarial)])
            amplified = report.amplified_perturbation(clean, shown.shown_adversarial)
            grid = summaries.image_grid([clean, shown.shown_adversarial, amplified])
            tf.summary.image(f"evaluate/adversarial_examples/{shown.spec.name}", grid)
        tf.summary.text("evaluate/report", text)
    writer.flush()
    writer.close()
