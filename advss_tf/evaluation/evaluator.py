"""A whole evaluation: test data → classifier SavedModel → clean, attacks, CIFAR-10-C → results.json + report.

Everything that can be wrong with the input (flags, model, test data, CIFAR-10-C source, an existing result) is
checked before the first attack, so bad input costs seconds and leaves nothing behind. The outputs are written
last: figures, TensorBoard scalars, report.md, and results.json (atomically, at the very end).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from advss_tf import summaries, workspace
from advss_tf.attacks.registry import DEFAULT_ATTACKS, AttackSpec, configure, parse_attacks
from advss_tf.config import versions
from advss_tf.corruptions.cifar10c import HEADLINE_CORRUPTIONS, SEVERITIES
from advss_tf.corruptions.sources import CIFAR10C_SOURCES, load_cifar10c
from advss_tf.data import cifar10
from advss_tf.errors import UsageError
from advss_tf.evaluation import corruption, report, robustness
from advss_tf.evaluation.model import default_model_name, load_classifier

NO_CIFAR10C = "none"
SCHEMA_VERSION = 1
REPORT = "report.md"
FIGURES = "figures"
TENSORBOARD_RUN = os.path.join(workspace.TENSORBOARD, "evaluate")
EXAMPLES_FIGURE = "adversarial_examples.png"
HEATMAP_FIGURE = "cifar10c_heatmap.png"
_PROBE_IMAGES = 8


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Everything an evaluation depends on; ε on the [0, 1] pixel scale."""

    model: str
    output_dir: str
    model_name: str | None = None
    data: cifar10.DataSource = cifar10.DataSource()
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    restarts: int = 1
    linf_epsilon: float = 8 / 255
    linf_epsilon_large: float = 16 / 255
    l2_epsilon: float = 0.5
    batch_size: int = 128
    max_examples: int = 0  # 0: the whole test set
    cifar10c_source: str = NO_CIFAR10C
    cifar10c_dir: str | None = None
    corruptions: tuple[str, ...] = HEADLINE_CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES
    seed: int = 0
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self):
        if self.batch_size < 1:
            raise UsageError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.max_examples < 0:
            raise UsageError(f"--max_examples must be >= 0 (0: all), got {self.max_examples}")
        if self.cifar10c_source not in (NO_CIFAR10C, *CIFAR10C_SOURCES):
            valid = ", ".join((NO_CIFAR10C, *CIFAR10C_SOURCES))
            raise UsageError(f"unknown CIFAR-10-C source {self.cifar10c_source!r}; valid: {valid}")
        self.attack_specs()  # validates names, radii and restarts
        # Normalised in place ('all' → names, "5" → 5): results.json records what actually ran.
        object.__setattr__(self, "attacks", tuple(parse_attacks(self.attacks)))
        object.__setattr__(self, "corruptions", corruption.parse_corruptions(self.corruptions))
        object.__setattr__(self, "severities", corruption.parse_severities(self.severities))

    def attack_specs(self) -> list[AttackSpec]:
        epsilons = {"linf": self.linf_epsilon, "linf_large": self.linf_epsilon_large, "l2": self.l2_epsilon}
        return configure(self.attacks, restarts=self.restarts, epsilons=epsilons)

    def settings(self) -> dict[str, Any]:
        """The settings results.json records (output location and verbosity left out)."""
        d = dataclasses.asdict(self)
        for k in ("output_dir", "overwrite", "quiet"):
            d.pop(k)
        return d


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuses an output directory that already holds results (unless `overwrite`) or is a file."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"--output_dir {output_dir} exists and is not a directory")
    existing = os.path.join(output_dir, workspace.RESULTS)
    if os.path.exists(existing) and not overwrite:
        raise UsageError(f"{existing} already exists; use another --output_dir or pass --overwrite")


def load_test_set(cfg: EvaluateConfig) -> tuple[np.ndarray, np.ndarray]:
    """The CIFAR-10 test images (uint8) and labels, cut to `max_examples`; an empty source is a UsageError."""
    images, labels = cifar10.load_arrays(cfg.data, "test")
    if cfg.max_examples:
        images, labels = images[: cfg.max_examples], labels[: cfg.max_examples]
    if not len(images):
        raise UsageError(f"the CIFAR-10 test set from --dataset={cfg.data.source} is empty")
    return images, labels


def _check_cifar10c_source(cfg: EvaluateConfig, images: np.ndarray, labels: np.ndarray) -> None:
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
    )


def run(cfg: EvaluateConfig, command: list[str] | None = None) -> dict[str, Any]:
    """Runs the evaluation `cfg` describes and writes its outputs; returns the results.json contents.

    Raises:
      UsageError: bad input (found before any attack runs).
    """
    start = time.perf_counter()
    specs = cfg.attack_specs()
    corruptions, severities = cfg.corruptions, cfg.severities
    check_output_dir(cfg.output_dir, cfg.overwrite)
    images, labels = load_test_set(cfg)
    classifier = load_classifier(cfg.model, robustness.to_float(images[:_PROBE_IMAGES]))
    batch_size = cfg.batch_size
    if classifier.batch_size is not None and classifier.batch_size != batch_size:
        logging.info(
            "signature %s takes batches of %d: using that batch size", classifier.signature, classifier.batch_size
        )
        batch_size = classifier.batch_size
    if cfg.cifar10c_source != NO_CIFAR10C:
        _check_cifar10c_source(cfg, images, labels)
    progress = not cfg.quiet
    common = dict(batch_size=batch_size, fixed_batch=classifier.batch_size)

    _say(progress, f"clean accuracy and gradient check on {len(images)} test images")
    clean = robustness.clean_evaluation(classifier, images, labels, progress=progress, **common)
    standard_accuracy = float(np.mean(clean["correct"]))
    outcomes = []
    for i, spec in enumerate(specs):
        _say(
            progress,
            f"attack {i + 1}/{len(specs)}: {spec.name} — {spec.description} "
            f"({spec.norm} ε={spec.to_dict()['epsilon_label']}, {spec.steps} steps, {spec.restarts} restart(s))",
        )
        outcome = robustness.run_attack(
            classifier, spec, images, labels, clean["correct"], seed=cfg.seed, progress=progress, **common
        )
        logging.info("%s: robust accuracy %.4f (%.1f s)", spec.name, outcome.accuracy, outcome.seconds)
        outcomes.append(outcome)
    n = len(images)
    zero_fraction = float(np.mean(clean["zero_gradient"]))
    nonfinite_fraction = float(np.mean(clean["nonfinite_gradient"]))
    flags = robustness.masking_flags({o.spec.name: o.accuracy for o in outcomes}, n, zero_fraction, nonfinite_fraction)

    cifar10c = None
    if cfg.cifar10c_source != NO_CIFAR10C:
        _say(
            progress,
            f"CIFAR-10-C ({cfg.cifar10c_source}): {len(corruptions)} corruptions × {len(severities)} severities",
        )
        cifar10c = corruption.evaluate_cifar10c(
            classifier,
            source=cfg.cifar10c_source,
            corruptions=corruptions,
            severities=severities,
            data_dir=cfg.cifar10c_dir,
            tfds_data_dir=cfg.data.tfds_data_dir,
            clean_images=images,
            clean_labels=labels,
            seed=cfg.seed,
            max_examples=cfg.max_examples or None,
            progress=progress,
            **common,
        )

    results = {
        "schema_version": SCHEMA_VERSION,
        "model": {"name": cfg.model_name or default_model_name(cfg.model), **classifier.describe()},
        "data": {
            "dataset": cfg.data.source,
            "data_dir": cfg.data.data_dir,
            "tfds_data_dir": cfg.data.tfds_data_dir,
            "split": "test",
            "num_examples": n,
        },
        "num_examples": n,
        "standard_accuracy": standard_accuracy,
        "robust_accuracy": {o.spec.name: o.to_dict() for o in outcomes},
        "gradient_masking": {
            "suspected": bool(flags),
            "flags": flags,
            "zero_gradient_fraction": zero_fraction,
            "nonfinite_gradient_fraction": nonfinite_fraction,
        },
        "cifar10c": cifar10c,
        "seed": cfg.seed,
        "batch_size": batch_size,
        "settings": cfg.settings(),
        "command": command,
        "versions": versions(),
        "wall_time_sec": 0.0,
    }
    figures = _write_figures(cfg.output_dir, results, classifier, images, labels, outcomes)
    results["figures"] = figures
    results["wall_time_sec"] = time.perf_counter() - start
    text = report.markdown_report(results)
    _write_tensorboard(cfg.output_dir, results, outcomes, images, text)
    _write_text(os.path.join(cfg.output_dir, REPORT), text)
    workspace.write_json(os.path.join(cfg.output_dir, workspace.RESULTS), results)
    print(text)
    return results


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, flush=True)
    else:
        logging.info(line)


def _shown_outcome(outcomes: list[robustness.AttackOutcome]) -> robustness.AttackOutcome | None:
    by_name = {o.spec.name: o for o in outcomes}
    return by_name.get("pgd20") or (outcomes[0] if outcomes else None)


def _write_figures(output_dir, results, classifier, images, labels, outcomes) -> dict[str, str]:
    """The adversarial-examples grid and the CIFAR-10-C heat map; returns {figure: path relative to output_dir}."""
    written = {}
    folder = os.path.join(output_dir, FIGURES)
    shown = _shown_outcome(outcomes)
    if shown is not None:
        k = len(shown.shown_adversarial)
        clean = robustness.to_float(images[:k])
        names = cifar10.class_names()

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
        if shown is not None:
            clean = robustness.to_float(images[: len(shown.shown_adversarial)])
            amplified = report.amplified_perturbation(clean, shown.shown_adversarial)
            grid = summaries.image_grid([clean, shown.shown_adversarial, amplified])
            tf.summary.image(f"evaluate/adversarial_examples/{shown.spec.name}", grid)
        tf.summary.text("evaluate/report", text)
    writer.flush()
    writer.close()


def _write_text(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
