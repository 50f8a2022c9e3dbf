"""Fine-tuning's validation and model selection (SPEC §8): SA and RA on the held-out split under the strategy, the
validation history, and the best-RA / best-SA / last classifier exports it decides."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advss_tf import export, serving, workspace
from advss_tf.attacks.pgd import cross_entropy, pgd_linf
from advss_tf.config import AttackConfig
from advss_tf.data import pipeline
from advss_tf.models.classifier import ImageClassifier
from advss_tf.tasks.base import accuracy
from advss_tf.training import cluster
from advss_tf.training.strategy import per_replica_batch

EXPORTS = ("best_ra", "best_sa", "last")
HISTORY = "validation_history.json"  # in export/: it decides which exports are best, and is cleared with them


# -- validation ------------------------------------------------------------------------------------------------------
class Validator:
    """Clean accuracy (SA) and robust accuracy (RA: correct clean and under PGD, as `evaluate`) in inference-mode
    BatchNorm over a fixed split, under the strategy.

    The attack's random starts depend on the seed and the batch only, so every validation sees the same starts:
    epochs are compared on equal terms.
    """

    def __init__(self, strategy, model, images, labels, *, batch_size, attack: AttackConfig, steps, seed, quiet):
        per_replica_batch(batch_size, strategy)
        self.strategy = strategy
        self.model = model
        self.attack = attack
        self.steps = steps
        self.quiet = quiet
        self.num_examples = len(labels)
        self.num_batches = -(-len(labels) // batch_size)
        # Pad the last batch with weight-0 images: every replica then gets a non-empty slice of every batch (an
        # empty one breaks the CPU convolution kernels), and the padding counts for nothing.
        pad = self.num_batches * batch_size - len(labels)
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        weights = np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)]).astype(np.int32)
        base = tf.constant(seed, tf.int64)

        def make_batch(i, batch):
            x, y, w = batch
            # Row j carries (seed, global example index): each replica's slice starts with a distinct seed.
            rows = tf.stack([tf.fill([batch_size], base), i * batch_size + tf.range(batch_size, dtype=tf.int64)], 1)
            return {"inputs": pipeline.to_float(x), "labels": y, "weights": w, "noise_seed": rows}

        ds = tf.data.Dataset.from_tensor_slices((images, labels, weights)).batch(batch_size).enumerate()
        ds = ds.map(make_batch).prefetch(tf.data.AUTOTUNE)
        self.dataset = cluster.distribute_dataset(strategy, ds)
        self._step = tf.function(self._distributed_step)

    def _replica_step(self, batch):
        x, y, w = batch["inputs"], batch["labels"], batch["weights"]

        def model_fn(z):
            return self.model(z, training=False)

        logits = model_fn(x)
        adv = pgd_linf(
            model_fn,
            x,
            y,
            eps=self.attack.eps,
            step_size=self.attack.step_size,
            steps=self.steps,
            seed=batch["noise_seed"][0],
        )
        adv_logits = model_fn(adv)
        clean_correct = accuracy(y, logits)
        return {
            "clean_correct": tf.reduce_sum(w * clean_correct),
            # RA as `evaluate` counts it: correct on the clean image AND on its adversarial example (a random start
            # can land a misclassified image on the right class; that is not robustness).
            "robust_correct": tf.reduce_sum(w * clean_correct * accuracy(y, adv_logits)),
            "clean_loss": tf.reduce_sum(w * cross_entropy(y, logits)),
            "robust_loss": tf.reduce_sum(w * cross_entropy(y, adv_logits)),
        }

    def _distributed_step(self, batch):
        out = self.strategy.run(self._replica_step, args=(batch,))
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in out.items()}

    def __call__(self, should_stop: Callable[[], bool] | None = None) -> dict[str, float] | None:
        """{'clean_accuracy', 'robust_accuracy', 'clean_loss', 'robust_loss'} over the split.

        Returns None when `should_stop()` turned true between batches (a signal arrived).
        """
        totals = dict.fromkeys(("clean_correct", "robust_correct", "clean_loss", "robust_loss"), 0.0)
        bar = None if self.quiet else keras.utils.Progbar(self.num_batches, unit_name="val batch")
        for i, batch in enumerate(self.dataset):
            if should_stop is not None and should_stop():
                return None
            out = self._step(batch)
            for k in totals:
                totals[k] += float(out[k].numpy())
            if bar is not None:
                bar.update(i + 1)
        n = float(self.num_examples)
        return {
            "clean_accuracy": totals["clean_correct"] / n,
            "robust_accuracy": totals["robust_correct"] / n,
            "clean_loss": totals["clean_loss"] / n,
            "robust_loss": totals["robust_loss"] / n,
        }


def validation_steps(total_steps: int, steps_per_epoch: int) -> list[int]:
    """Steps after which to validate: every epoch end, and the last step."""
    points = list(range(steps_per_epoch, total_steps + 1, steps_per_epoch))
    if not points or points[-1] != total_steps:
        points.append(total_steps)
    return points


# -- export ----------------------------------------------------------------------------------------------------------
def export_classifier(path: str, model: ImageClassifier, info: dict[str, Any]) -> None:
    """The classifier SavedModel (serving_default / serving_uint8 → logits, probabilities), atomically."""
    serving.save_classifier(
        path,
        lambda images: model(images, training=False),
        {"trunk": model.trunk, "stage4": model.stage4, "head": model.head},
        info,
        image_shape=tuple(info.get("data", {}).get("image_shape", export.DEFAULT_IMAGE_SHAPE)),
    )


def _copy_export(src: str, dst: str, selected_by: str) -> None:
    """Atomically replaces `dst` with a copy of the export `src` whose info says `selected_by`."""
    info = export.read_info(src)
    with export.atomic_directory(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        with open(os.path.join(tmp, "assets", export.EXPORT_INFO), "w", encoding="utf-8") as f:
            json.dump({**info, "selected_by": selected_by}, f, indent=2, sort_keys=True)


def _best(history: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The first entry with the highest `key` (a later tie does not replace it, as the reference's `>`)."""
    best = None
    for h in history:
        if best is None or h[key] > best[key]:
            best = h
    return best


class ModelSelection:
    """The validation history and the exports it decides (SPEC §8: select on validation RA).

    After every validation: `last` is exported; `best_ra` / `best_sa` are replaced when this validation is the new
    best (the first of equal values is kept, as the reference's `>`). The history lives next to the exports in
    `export/validation_history.json`, written after them, so a run cut short re-validates rather than mis-selects.
    """

    def __init__(self, export_root: str, base_info: dict[str, Any], attack_info: dict[str, Any], writer):
        self.export_root = export_root
        self.base_info = base_info
        self.attack_info = attack_info
        self.writer = writer
        self.history_path = os.path.join(export_root, HISTORY)
        self.history: list[dict[str, Any]] = []
        if os.path.exists(self.history_path):
            with open(self.history_path, encoding="utf-8") as f:
                self.history = json.load(f)

    def validated(self, step: int) -> bool:
        return any(h["step"] == step for h in self.history)

    def record(self, model: ImageClassifier, entry: dict[str, Any]) -> None:
        """Adds a validation (step, epoch, metrics): TensorBoard, exports, then the history file."""
        self.history.append(entry)
        with self.writer.as_default(step=entry["step"]):
            for k, v in entry.items():
                if k not in ("step", "epoch"):
                    tf.summary.scalar(f"validation/{k}", v)
        self.writer.flush()
        validation = {**entry, "split": "validation (held out of the training set)", "attack": self.attack_info}
        last = os.path.join(self.export_root, "last")
        export_classifier(last, model, {**self.base_info, "selected_by": "last", "validation": validation})
        for name, key in (("best_ra", "robust_accuracy"), ("best_sa", "clean_accuracy")):
            if _best(self.history, key) is entry:  # the same weights as `last`: copy it rather than trace again
                _copy_export(last, os.path.join(self.export_root, name), selected_by=key)
        workspace.write_json(self.history_path, self.history)

    def summary(self) -> dict[str, Any]:
        """Best-RA, best-SA and last validation (epoch, step, SA, RA), and the whole history."""

        def pick(entry):
            return (
                None if entry is None else {k: entry[k] for k in ("epoch", "step", "clean_accuracy", "robust_accuracy")}
            )

        return {
            "best_robust_accuracy": pick(_best(self.history, "robust_accuracy")),
            "best_clean_accuracy": pick(_best(self.history, "clean_accuracy")),
            "last": pick(self.history[-1] if self.history else None),
            "exports": {name: os.path.join(self.export_root, name) for name in EXPORTS},
            "history": self.history,
            "validation_attack": self.attack_info,
        }
