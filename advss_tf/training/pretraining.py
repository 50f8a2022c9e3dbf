"""A pretraining run: the pretext task from the table, trained by the run skeleton (`runs.run`), then exported."""

from __future__ import annotations

import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advss_tf import export, summaries, workspace
from advss_tf.config import PretrainConfig, to_dict, versions
from advss_tf.data import cifar10, pipeline
from advss_tf.data.datasets import DatasetInfo
from advss_tf.tasks.table import AUGMENTATION, build_task, check_image_shape
from advss_tf.training import runs

PRETRAIN_EXPORT = "pretrain"


def run(cfg: PretrainConfig, overwrite: bool = False) -> dict[str, Any]:
    """Trains (or resumes) the run in `cfg.model_dir`, exports it and returns the results dict."""
    return runs.run(cfg, PretrainRun(), overwrite)


class PretrainRun(runs.RunKind):
    """Pretraining's parts of the run skeleton: the task from the table, its pictures, and the export at the end."""

    def check_data(self, cfg: PretrainConfig, data: runs.TrainingData) -> runs.TrainingData:
        check_image_shape(cfg.task, data.info.image_shape)  # labels are never read (an unlabelled source is fine)
        return data

    def build(self, cfg: PretrainConfig, data_info: DatasetInfo) -> runs.Built:
        task = build_task(cfg)
        model = task.build_model()
        extras = task.extra_checkpoint_items()
        # A task may train a subset of its model (DynACL's query encoder; its momentum key is moved, not trained).
        trained = task.trained_variables(model) if hasattr(task, "trained_variables") else model.trainable_variables
        return runs.Built(task, model, trained, checkpoint_items=extras, must_match=extras)

    def augmentation(self, cfg: PretrainConfig) -> dict[str, Any]:
        return AUGMENTATION[cfg.task]

    def image_fn(self, session: runs.Session):
        cfg, task, model = session.cfg, session.built.task, session.built.model
        probe = _probe_batch(task, session.data.x_val, cfg)

        def image_fn():
            for name, img in task.summary_images(probe).items():
                tf.summary.image(name, summaries.image_grid([img]))
            adv = task.craft(model, probe, tf.constant([cfg.seed, 7], tf.int64), False)
            if isinstance(adv, tf.Tensor):
                tf.summary.image(
                    "adversarial/clean|adv|perturbation",
                    summaries.adversarial_grid(probe["inputs"], adv, cfg.attack.eps),
                )

        return image_fn

    def finish(self, session: runs.Session, trained: dict[str, float]) -> dict[str, Any]:
        cfg = session.cfg
        export_dir = workspace.path(cfg.model_dir, workspace.EXPORT, PRETRAIN_EXPORT)
        write_export(export_dir, session.built.task, session.built.model, cfg, data_info=session.data.info)
        return {
            "task": cfg.task,
            "steps": session.step,
            "final_train_metrics": trained,
            "export": export_dir,
            "wall_time_sec": time.time() - session.start_time,
            "versions": versions(),
        }


def write_export(
    export_dir: str,
    task,
    model: keras.Model,
    cfg: PretrainConfig,
    extra_info: dict | None = None,
    data_info: DatasetInfo | None = None,
) -> None:
    """The pretraining SavedModel of `task`'s `model` (what `finetune --pretrained` restores), atomically.

    `extra_info` adds entries to assets/advss_export.json (an imported model records where it came from);
    `data_info` is what the model was trained on (None: CIFAR-10, as the reference's models were).
    """
    if data_info is None:
        data_info = DatasetInfo("cifar10", cifar10.NUM_CLASSES, cifar10.IMAGE_SHAPE, tuple(cifar10.class_names()))
    export.save(
        export_dir,
        task.export_parts(model),
        task.export_signatures(model),
        info={
            "format": "advss_tf.pretrain",
            "version": 1,
            **task.export_info(),
            "backbone": to_dict(cfg.backbone),
            "feature_dim": cfg.backbone.feature_dim,
            "trunk_channels": cfg.backbone.trunk_channels,
            "data": data_info.to_dict(),
            "config": to_dict(cfg),
            "versions": versions(),
            **(extra_info or {}),
        },
        assets=task.export_assets(),
        image_shape=data_info.image_shape,
    )


def _probe_batch(task, x_val: np.ndarray, cfg: PretrainConfig, n: int = 8) -> dict:
    """A fixed handful of validation images, pretext-transformed, for the TensorBoard pictures."""
    images = pipeline.to_float(tf.constant(x_val[:n]))
    batch = task.transform(images, tf.zeros([n], tf.int32), tf.constant([cfg.seed, 11], tf.int64))
    return batch
