"""A whole pretraining run: data → strategy scope (model, optimizer) → resume → loop → export → results."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from advss_tf import export, faults, summaries, workspace
from advss_tf.config import PretrainConfig, to_dict, versions
from advss_tf.data import cifar10, pipeline
from advss_tf.data.datasets import DatasetInfo
from advss_tf.errors import UsageError
from advss_tf.tasks.table import AUGMENTATION, build_task, check_image_shape
from advss_tf.training import cluster, loop
from advss_tf.training.runs import (
    load_training_images,
    make_optimizer,
    new_step_counter,
    restore_or_init,
    set_precision,
)
from advss_tf.training.strategy import make_strategy, per_replica_batch

PRETRAIN_EXPORT = "pretrain"


def run(cfg: PretrainConfig, overwrite: bool = False) -> dict[str, Any]:
    """Trains (or resumes) the run in `cfg.model_dir`, exports it and returns the results dict."""
    start_time = time.time()
    rt = cfg.runtime
    strategy = make_strategy(rt.strategy, rt.num_cpu_devices, rt.cluster_resolver, rt.worker_timeout)
    cfg = dataclasses.replace(cfg, model_dir=cluster.worker_model_dir(strategy, cfg.model_dir))
    per_replica_batch(cfg.batch_size, strategy)
    # Bad data fails before anything is written; labels are never read (an unlabelled source is fine).
    x_train, y_train, x_val, _, data_info = load_training_images(cfg)
    check_image_shape(cfg.task, data_info.image_shape)
    workspace.prepare(cfg.model_dir, cfg, overwrite, data_info.to_dict())
    set_precision(rt.mixed_precision)
    steps_per_epoch = len(x_train) // cfg.batch_size
    if steps_per_epoch < 1:
        raise UsageError(f"batch size {cfg.batch_size} is larger than the {len(x_train)} training images")
    total_steps = loop.steps_for(cfg.epochs, cfg.train_steps, steps_per_epoch)

    keras.utils.set_random_seed(cfg.seed)  # weight initialisation follows --seed too
    with strategy.scope():
        task = build_task(cfg)
        model = task.build_model()
        optimizer, lr = make_optimizer(cfg, steps_per_epoch, total_steps, rt.mixed_precision)
        optimizer.build(model.trainable_variables)  # Keras 3 under MirroredStrategy: build inside the scope
        extras = task.extra_checkpoint_items()
        expected = {k: (v, v.numpy().copy()) for k, v in extras.items()}
        step_counter = new_step_counter()
        checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            step=step_counter,
            random_state=loop.seed_generator_states(model),  # the dropout masks continue where they were
            **extras,
        )
        manager = tf.train.CheckpointManager(
            checkpoint, workspace.path(cfg.model_dir, workspace.CHECKPOINTS), max_to_keep=rt.max_checkpoints
        )
        cluster.create_save_counter(strategy, checkpoint)
        resumed = restore_or_init(manager, checkpoint, expected)
        cluster.broadcast_from_chief(strategy, [*model.variables, *optimizer.variables, step_counter])
    start_step = int(step_counter.numpy())
    if resumed:
        logging.info("resuming %s from step %d of %d", cfg.model_dir, start_step, total_steps)

    trainer = loop.Trainer(
        strategy,
        task,
        model,
        optimizer,
        global_batch_size=cfg.batch_size,
        weight_decay=cfg.optimizer.weight_decay,
        adversarial=cfg.adversarial,
        attack_bn_train=cfg.attack.bn == "train",
        jit_compile=rt.jit_compile,
        step_counter=step_counter,
    )
    augmentation = AUGMENTATION[cfg.task]
    dataset = pipeline.train_dataset(
        x_train,
        y_train,
        global_batch_size=cfg.batch_size,
        seed=cfg.seed,
        start_step=start_step,
        transform=task.transform,
        **augmentation,
    )
    iterator = iter(cluster.distribute_dataset(strategy, dataset))
    writer = tf.summary.create_file_writer(workspace.path(cfg.model_dir, workspace.TENSORBOARD, "train"))
    if start_step == 0:
        with writer.as_default():
            summaries.write_config({**to_dict(cfg), "versions": versions()})

    probe = _probe_batch(task, x_val, cfg)

    def image_fn():
        for name, img in task.summary_images(probe).items():
            tf.summary.image(name, summaries.image_grid([img]))
        adv = task.craft(model, probe, tf.constant([cfg.seed, 7], tf.int64), False)
        if isinstance(adv, tf.Tensor):
            tf.summary.image(
                "adversarial/clean|adv|perturbation", summaries.adversarial_grid(probe["inputs"], adv, cfg.attack.eps)
            )

    last = loop.run_loop(
        trainer,
        iterator,
        start_step=start_step,
        total_steps=total_steps,
        manager=manager,
        writer=writer,
        steps_per_loop=rt.steps_per_loop,
        checkpoint_every=rt.checkpoint_every,
        image_summary_every=rt.image_summary_every,
        image_fn=image_fn,
        lr_fn=lambda step: float(lr(step)),
        quiet=rt.quiet,
    )
    if manager.latest_checkpoint is None or int(step_counter.numpy()) > _ckpt_step(manager):
        manager.save(checkpoint_number=int(step_counter.numpy()), options=faults.checkpoint_options())

    export_dir = workspace.path(cfg.model_dir, workspace.EXPORT, PRETRAIN_EXPORT)
    write_export(export_dir, task, model, cfg, data_info=data_info)
    results = {
        "task": cfg.task,
        "steps": int(step_counter.numpy()),
        "final_train_metrics": last,
        "export": export_dir,
        "wall_time_sec": time.time() - start_time,
        "versions": versions(),
    }
    workspace.write_json(workspace.path(cfg.model_dir, workspace.RESULTS), results)
    return results


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


def _ckpt_step(manager: tf.train.CheckpointManager) -> int:
    return int(manager.latest_checkpoint.rsplit("-", 1)[-1]) if manager.latest_checkpoint else -1


def _probe_batch(task, x_val: np.ndarray, cfg: PretrainConfig, n: int = 8) -> dict:
    """A fixed handful of validation images, pretext-transformed, for the TensorBoard pictures."""
    images = pipeline.to_float(tf.constant(x_val[:n]))
    batch = task.transform(images, tf.zeros([n], tf.int32), tf.constant([cfg.seed, 11], tf.int64))
    return batch
