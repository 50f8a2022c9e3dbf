"""A whole evaluation: test data → classifier SavedModel → clean, attacks, CIFAR-10-C → results.json + report.

The evaluate binary's door onto the evaluation core (`core.evaluate`, which the Python API calls too): this module
adds only the data loading, the resume records, CIFAR-10-C and the files written.
Everything that can be wrong with the input (flags, model, test data, CIFAR-10-C source, an existing result,
another evaluation's partial results) is checked before the first attack, so bad input costs seconds and leaves
nothing behind. Every finished batch is recorded under <output_dir>/partial/ (`records`), so the same command
after SIGTERM, Ctrl-C or a crash continues where it stopped with the numbers of an uninterrupted run. The outputs
are written last: figures, TensorBoard scalars, report.md, per_example.npz, model_card.json, cifar10c.csv, and
results.json (atomically, at the very end); then the partial records are removed.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import numpy as np
import tensorflow as tf

from advss_tf import export, summaries, workspace
from advss_tf.config import NO_CIFAR10C, EvaluateConfig, default_model_name, versions
from advss_tf.corruptions.sources import load_cifar10c
from advss_tf.data import datasets
from advss_tf.errors import UsageError
from advss_tf.evaluation import core, corruption, report, robustness, worst_case
from advss_tf.evaluation.core import check_class_count
from advss_tf.evaluation.records import PartialStore, write_text
from advss_tf.evaluation.worst_case import outcome_name
from advss_tf.serving import model_hashes
from advss_tf.training.loop import SignalGuard
from advss_tf.training.strategy import make_strategy

SCHEMA_VERSION = 3
REPORT = "report.md"
CIFAR10C_CSV = "cifar10c.csv"
# Settings that change no number: left out of the identity partial results are matched by.
_NOT_IDENTITY = ("model", "model_name", "strategy", "num_cpu_devices")
FIGURES = "figures"
TENSORBOARD_RUN = os.path.join(workspace.TENSORBOARD, "evaluate")
EXAMPLES_FIGURE = "adversarial_examples.png"
HEATMAP_FIGURE = "cifar10c_heatmap.png"


def partial_identity(cfg: EvaluateConfig, model_ids: dict[str, str], batch_size: int) -> dict[str, Any]:
    """What partial results must match to be resumed: the model's hashes and every setting that changes a number
    (the batch size actually used included; the strategy not: it changes no number)."""
    settings = {k: v for k, v in cfg.settings().items() if k not in _NOT_IDENTITY}
    return {"schema_version": SCHEMA_VERSION, "model": model_ids, "settings": settings, "batch_size": batch_size}


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
    model = core.open_model(cfg.model, robustness.to_float(images[: core.PROBE_IMAGES]), data_info.num_classes)
    batch_size = model.batch_size(cfg.batch_size)
    if cfg.cifar10c_source != NO_CIFAR10C:
        _check_cifar10c_source(cfg, images, labels, data_info.num_classes)
    store = PartialStore(cfg.output_dir, partial_identity(cfg, model_hashes(cfg.model), batch_size))
    resuming = store.check(cfg.overwrite)
    store.open(cfg.overwrite and not resuming)  # the first thing written: every input check has passed
    if resuming:
        core.sayer(not cfg.quiet)(f"continuing the evaluation recorded in {store.folder}")
    with SignalGuard() as guard:
        robustness.watch_signals(guard)
        try:
            evaluation = core.evaluate(
                model, images, labels, plan, door=core.CLI, seed=cfg.seed, batch_size=batch_size,
                progress=not cfg.quiet, store=store, strategy=strategy,
            )  # fmt: skip
            cifar10c = _evaluate_cifar10c(cfg, model, images, labels, store, batch_size, data_info.num_classes)
        finally:
            robustness.watch_signals(None)
    n = len(images)
    outcomes = evaluation.outcomes
    results = {
        "schema_version": SCHEMA_VERSION,
        "model": {"name": cfg.model_name or default_model_name(cfg.model), **model.describe(), **_trained_by(cfg)},
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
        "standard_accuracy": evaluation.clean_accuracy,
        "robust_accuracy": {outcome_name(o): o.to_dict() for o in outcomes},
        "worst_case": evaluation.worst_case,
        "gradient_masking": evaluation.checks,
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
    figures = _write_figures(out, results, model, images, labels, outcomes, data_info.class_names)
    results["figures"] = figures
    results["per_example"] = worst_case.PER_EXAMPLE
    results["model_card"] = worst_case.MODEL_CARD
    worst_case.write_per_example(os.path.join(out, worst_case.PER_EXAMPLE), labels, evaluation.per_example)
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


def _evaluate_cifar10c(cfg, model, images, labels, store, batch_size, num_classes) -> dict[str, Any] | None:
    """Accuracy on CIFAR-10-C (None when `cfg` asks for none); each set taken from `store` when it finished."""
    if cfg.cifar10c_source == NO_CIFAR10C:
        return None
    progress = not cfg.quiet
    core.sayer(progress)(
        f"CIFAR-10-C ({cfg.cifar10c_source}): {len(cfg.corruptions)} corruptions × {len(cfg.severities)} severities"
    )
    return corruption.evaluate_cifar10c(
        model,
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
        batch_size=batch_size,
        fixed_batch=model.fixed_batch,
    )


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


def _shown_outcome(outcomes: list) -> robustness.AttackOutcome | None:
    singles = [o for o in outcomes if isinstance(o, robustness.AttackOutcome)]
    by_name = {o.spec.name: o for o in singles}
    return by_name.get("pgd20") or (singles[0] if singles else None)


def _write_figures(output_dir, results, model, images, labels, outcomes, class_names) -> dict[str, str]:
    """The adversarial-examples grid and the CIFAR-10-C heat map; returns {figure: path relative to output_dir}."""
    written = {}
    folder = os.path.join(output_dir, FIGURES)
    shown = _shown_outcome(outcomes)
    if shown is not None and len(shown.shown_adversarial):
        k = len(shown.shown_adversarial)
        clean = robustness.to_float(images[:k])
        names = list(class_names)

        def predicted(x):
            return [names[i] for i in np.argmax(model(tf.constant(x)).numpy(), -1)]

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
