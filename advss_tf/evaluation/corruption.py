"""Accuracy on CIFAR-10-C (SPEC §7): one loop over (corruption, severity), whatever the source.

The sets come from `advss_tf.corruptions.sources.load_cifar10c` (the built-in generator, the official .npy folder,
or TFDS); the per-set accuracies are aggregated with `aggregate_cifar10c` into the uncertainty-baselines keys
(`corrupt/<name>_<s>/accuracy`, ...). results.json also holds them as a corruption × severity table.
"""

from __future__ import annotations

import time
from typing import Any

import keras
import numpy as np

from advss_tf.corruptions.cifar10c import HEADLINE_CORRUPTIONS, SEVERITIES
from advss_tf.corruptions.sources import aggregate_cifar10c, load_cifar10c
from advss_tf.errors import UsageError
from advss_tf.evaluation.records import PartialStore, write_text
from advss_tf.evaluation.robustness import ModelFn, Predictor, check_stop

HEADLINE_SETS = len(HEADLINE_CORRUPTIONS) * len(SEVERITIES)  # 75


def evaluate_cifar10c(
    model_fn: ModelFn,
    *,
    source: str,
    corruptions: tuple[str, ...],
    severities: tuple[int, ...],
    data_dir: str | None,
    tfds_data_dir: str | None,
    clean_images: np.ndarray,
    clean_labels: np.ndarray,
    seed: int,
    max_examples: int | None,
    batch_size: int,
    fixed_batch: int | None = None,
    progress: bool = False,
    store: PartialStore | None = None,
    num_classes: int = 10,
) -> dict[str, Any]:
    """Accuracy on every (corruption, severity) set, with the means.

    Args:
      model_fn: float32 images [N, 32, 32, 3] in [0, 1] → logits [N, 10].
      source: "generate", "npy" or "tfds" (`CIFAR10C_SOURCES`).
      corruptions, severities: what to evaluate.
      data_dir: the .npy folder (npy); tfds_data_dir: the TFDS data folder (tfds).
      clean_images, clean_labels: uint8 test images and labels the generator corrupts (generate).
      seed: the generator's seed.
      max_examples: first this many examples of each set (None: all).
      batch_size, fixed_batch: images per call; the signature's fixed batch size or None.
      progress: show a progress bar over the sets.
      store: records each finished set (resume) and takes finished ones from there.
      num_classes: the test data's class count (npy labels are checked against it; 100 for CIFAR-100-C).

    Returns:
      The "cifar10c" section of results.json (see docs/evaluate.md).
    """
    start = time.perf_counter()
    predictor = Predictor(model_fn, fixed_batch)
    accuracy: dict[tuple[str, int], float] = {}
    sizes = set()
    pairs = [(c, s) for c in corruptions for s in severities]
    bar = keras.utils.Progbar(len(pairs), stateful_metrics=["acc"], unit_name="set") if progress else None
    for i, (name, severity) in enumerate(pairs):
        record = store.load(f"cifar10c/{name}_{severity}") if store is not None else None
        if record is not None:
            accuracy[(name, severity)] = float(record["accuracy"])
            sizes.add(int(record["num_examples"]))
            continue
        images, labels = load_cifar10c(
            source,
            name,
            severity,
            data_dir=data_dir,
            tfds_data_dir=tfds_data_dir,
            clean_images=clean_images,
            clean_labels=clean_labels,
            seed=seed,
            max_examples=max_examples,
            num_classes=num_classes,
        )
        if not len(images):
            raise UsageError(f"CIFAR-10-C {name} severity {severity} from source {source} is empty")
        accuracy[(name, severity)] = float(np.mean(predictor.correct(images, labels, batch_size)))
        sizes.add(len(images))
        if store is not None:
            store.save(f"cifar10c/{name}_{severity}", accuracy=accuracy[(name, severity)], num_examples=len(images))
        if bar is not None:
            bar.update(i + 1, values=[("acc", accuracy[(name, severity)])])
        check_stop()
    metrics = aggregate_cifar10c(accuracy)
    headline_sets = sum(1 for name, _ in accuracy if name in HEADLINE_CORRUPTIONS)
    table = {name: {str(s): accuracy[(name, s)] for s in severities} for name in corruptions}
    return {
        "source": source,
        "corruptions": list(corruptions),
        "severities": list(severities),
        "num_examples": max(sizes) if len(sizes) == 1 else sorted(sizes),
        "accuracy": table,
        "mean_accuracy": metrics.get("corrupt/mean_accuracy"),
        # The headline number of papers averages all 15 × 5 sets: over fewer it is only a partial mean.
        "headline_sets": headline_sets,
        "headline_complete": headline_sets == HEADLINE_SETS,
        "mean_accuracy_per_severity": {
            str(s): metrics[f"corrupt/severity_{s}/accuracy"]
            for s in severities
            if f"corrupt/severity_{s}/accuracy" in metrics
        },
        "mean_accuracy_per_corruption": {c: metrics[f"corrupt/{c}/accuracy"] for c in corruptions},
        "extra_mean_accuracy": metrics.get("corrupt/extra_mean_accuracy"),
        "metrics": metrics,
        "seconds": time.perf_counter() - start,
    }


def write_csv(path: str, cifar10c: dict[str, Any]) -> None:
    """The per-(corruption, severity) accuracies as CSV: corruption,severity,accuracy,num_examples (atomically)."""
    lines = ["corruption,severity,accuracy,num_examples"]
    sizes = cifar10c["num_examples"]
    for name, row in cifar10c["accuracy"].items():
        for severity, value in row.items():
            lines.append(f"{name},{severity},{value:.6f},{sizes if isinstance(sizes, int) else ''}")
    write_text(path, "\n".join(lines) + "\n")
