"""A whole fine-tuning run (SPEC §8): restore the backbone from a pretraining export → train → validate every epoch
(clean and PGD-20 accuracy on the held-out split) → classifier exports best_ra / best_sa / last → results.json.

The test set is never read here: model selection uses the validation split carved from the training set.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from advss_tf import export, summaries, workspace
from advss_tf.attacks.pgd import check_budget
from advss_tf.config import AttackConfig, OptimizerConfig, RuntimeConfig, to_dict, versions
from advss_tf.data import pipeline
from advss_tf.data.datasets import DataSource
from advss_tf.errors import UsageError
from advss_tf.models.backbones import BackboneConfig
from advss_tf.models.classifier import ImageClassifier
from advss_tf.tasks.finetune import FROZEN_PARTS, MODES, OBJECTIVES, FinetuneTask, trainable_variables
from advss_tf.tasks.table import check_image_shape
from advss_tf.training import cluster, loop
from advss_tf.training.runs import (
    load_training_images,
    make_optimizer,
    new_step_counter,
    restore_or_init,
    set_precision,
)
from advss_tf.training.strategy import make_strategy, per_replica_batch
from advss_tf.training.validation import ModelSelection, Validator, validation_steps

PRETRAIN_FORMAT = "advss_tf.pretrain"
DEFAULT_BACKBONE = "resnet18"  # without --pretrained and --backbone
# The reference recipe (finetune/main.py): SGD 0.9, lr 0.1, coupled L2 3e-4, ×0.1 at epochs 60 and 80, and in
# epoch 0 a linear warm-up 0.01 → 0.1 over 200 steps.
FINETUNE_OPTIMIZER = OptimizerConfig(
    learning_rate=0.1,
    momentum=0.9,
    weight_decay=3e-4,
    schedule="step",
    warmup_steps=200,
    warmup_start_lr=0.01,
    boundaries_epochs=(60, 80),
    decay_factor=0.1,
)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Everything a fine-tuning run depends on.

    `backbone` None means: the pretraining export's backbone (or resnet18 without `pretrained`), with `sync_bn`.
    """

    model_dir: str
    pretrained: str | None = None
    backbone: BackboneConfig | None = None
    sync_bn: bool = False
    mode: str = "full"
    objective: str = "adversarial"
    trades_beta: float = 6.0
    aux_rotation_weight: float = 0.0
    data: DataSource = DataSource()
    train_fraction: float = 1.0
    batch_size: int = 128
    epochs: float = 100.0
    train_steps: int = 0  # > 0 overrides epochs (smoke runs, benchmarks)
    attack: AttackConfig = AttackConfig()
    val_attack_steps: int = 20
    val_examples: int = 0  # 0: the whole validation split
    val_batch_size: int = 128
    optimizer: OptimizerConfig = FINETUNE_OPTIMIZER
    seed: int = 0
    runtime: RuntimeConfig = RuntimeConfig()

    def __post_init__(self):
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.objective not in OBJECTIVES:
            raise UsageError(f"unknown objective {self.objective!r}; valid: {', '.join(OBJECTIVES)}")
        if self.trades_beta < 0:
            raise UsageError(f"--trades_beta must be >= 0, got {self.trades_beta}")
        if self.aux_rotation_weight < 0:
            raise UsageError(f"--aux_rotation_weight must be >= 0, got {self.aux_rotation_weight}")
        if self.aux_rotation_weight > 0 and self.objective == "trades":
            raise UsageError("--aux_rotation_weight goes with --objective=adversarial or standard, not trades")
        if self.mode != "full" and not self.pretrained:
            raise UsageError(f"--mode={self.mode} freezes the backbone: it needs --pretrained=<pretraining export>")
        if self.batch_size < 1 or self.val_batch_size < 1:
            raise UsageError("--batch_size and --val_batch_size must be >= 1")
        if not 0.0 < self.train_fraction <= 1.0:
            raise UsageError(f"--train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.epochs <= 0 and self.train_steps <= 0:
            raise UsageError("give --epochs > 0 or --train_steps > 0")
        if self.val_examples < 0:
            raise UsageError(f"--val_examples must be >= 0, got {self.val_examples}")
        check_budget(self.attack.eps, self.attack.step_size, self.val_attack_steps)

    @property
    def adversarial(self) -> bool:
        return self.objective != "standard"


# -- the pretrained backbone -----------------------------------------------------------------------------------------
def read_pretrained_info(path: str) -> dict[str, Any]:
    """The info of a pretraining export; UsageError for a missing, non-advss or non-pretraining SavedModel."""
    if not os.path.isdir(path):
        raise UsageError(f"--pretrained {path} does not exist; give <pretrain model_dir>/export/pretrain")
    info = export.read_info(path)
    if info.get("format") != PRETRAIN_FORMAT:
        raise UsageError(
            f"{path} is a {info.get('format', 'unknown')!r} export, not a pretraining export ({PRETRAIN_FORMAT})"
        )
    if "trunk" not in info.get("parts", []) or "backbone" not in info:
        raise UsageError(f"{path} holds no trunk (parts: {info.get('parts')}); it cannot initialise a classifier")
    return info


def resolve_backbone(cfg: FinetuneConfig) -> tuple[FinetuneConfig, dict[str, Any] | None]:
    """Fills in `cfg.backbone` from the export when not given; refuses an export of another architecture."""
    if not cfg.pretrained:
        if cfg.backbone:
            return cfg, None
        return dataclasses.replace(cfg, backbone=BackboneConfig(DEFAULT_BACKBONE, cfg.sync_bn)), None
    info = read_pretrained_info(cfg.pretrained)
    name = info["backbone"].get("name")
    if cfg.backbone is not None and cfg.backbone.name != name:
        raise UsageError(
            f"--backbone={cfg.backbone.name} but {cfg.pretrained} was pretrained with {name}; "
            f"drop --backbone to use the export's"
        )
    # The export's block definition (an export without `arch_version` predates it: version 1), whatever the default.
    sync_bn = cfg.backbone.sync_bn if cfg.backbone is not None else cfg.sync_bn
    return dataclasses.replace(cfg, backbone=BackboneConfig.from_dict(info["backbone"], sync_bn=sync_bn)), info


def restore_pretrained(path: str, info: dict[str, Any], model: ImageClassifier) -> list[str]:
    """Restores trunk (and stage 4 when the export has one) into `model`; every variable must match.

    Returns:
      The restored part names.
    """
    parts = {"trunk": model.trunk}
    if "stage4" in info.get("parts", []):
        parts["stage4"] = model.stage4
    export.restore_parts(path, **parts)
    return sorted(parts)


# -- the run ---------------------------------------------------------------------------------------------------------
def run(cfg: FinetuneConfig, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tunes (or resumes) the run in `cfg.model_dir`, exports best_ra / best_sa / last, returns the results."""
    start_time = time.time()
    rt = cfg.runtime
    cfg, info = resolve_backbone(cfg)  # a foreign or missing export fails before anything is written
    if info is not None and cfg.mode == "linear" and "stage4" not in info.get("parts", []):
        raise UsageError(
            f"{cfg.pretrained} has no stage 4 (parts: {', '.join(info['parts'])}); --mode=linear would freeze a "
            "randomly initialised stage 4: use --mode=partial or full"
        )
    strategy = make_strategy(rt.strategy, rt.num_cpu_devices, rt.cluster_resolver, rt.worker_timeout)
    cfg = dataclasses.replace(cfg, model_dir=cluster.worker_model_dir(strategy, cfg.model_dir))
    per_replica_batch(cfg.batch_size, strategy)
    per_replica_batch(cfg.val_batch_size, strategy)
    # The training set only, never the test set; it must carry labels of at least two classes.
    x_train, y_train, x_val, y_val, data_info = load_training_images(cfg, purpose="fine-tuning")
    if cfg.aux_rotation_weight:
        check_image_shape("rotation", data_info.image_shape)
    if cfg.val_examples:
        x_val, y_val = x_val[: cfg.val_examples], y_val[: cfg.val_examples]
    workspace.prepare(cfg.model_dir, cfg, overwrite, data_info.to_dict())
    set_precision(rt.mixed_precision)
    steps_per_epoch = len(x_train) // cfg.batch_size
    if steps_per_epoch < 1:
        raise UsageError(f"batch size {cfg.batch_size} is larger than the {len(x_train)} training images")
    total_steps = loop.steps_for(cfg.epochs, cfg.train_steps, steps_per_epoch)

    keras.utils.set_random_seed(cfg.seed)  # the new head (and a from-scratch backbone) follow --seed
    with strategy.scope():
        model = ImageClassifier(cfg.backbone, data_info.num_classes, name="classifier")
        model.frozen_parts = frozenset(FROZEN_PARTS[cfg.mode])
        if info is not None:
            restored = restore_pretrained(cfg.pretrained, info, model)
            fresh = sorted({"trunk", "stage4"} - set(restored))
            logging.info(
                "restored %s from the %s export %s%s",
                " and ".join(restored),
                info.get("task", "?"),
                cfg.pretrained,
                f"; {', '.join(fresh)} starts from random init (not in the export)" if fresh else "",
            )
        else:
            logging.info("no --pretrained: end-to-end training from random init")
        task = FinetuneTask(
            cfg.objective,
            cfg.attack,
            trades_beta=cfg.trades_beta,
            aux_rotation_weight=cfg.aux_rotation_weight,
            feature_dim=cfg.backbone.feature_dim,
        )
        variables = trainable_variables(model, cfg.mode) + task.extra_variables()
        optimizer, lr = make_optimizer(cfg, steps_per_epoch, total_steps, rt.mixed_precision)
        optimizer.build(variables)  # Keras 3 under MirroredStrategy: build inside the scope
        step_counter = new_step_counter()
        checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            step=step_counter,
            random_state=loop.seed_generator_states(model),
            **task.checkpoint_items(),
        )
        manager = tf.train.CheckpointManager(
            checkpoint, workspace.path(cfg.model_dir, workspace.CHECKPOINTS), max_to_keep=rt.max_checkpoints
        )
        cluster.create_save_counter(strategy, checkpoint)
        resumed = restore_or_init(manager, checkpoint, {})
        cluster.broadcast_from_chief(
            strategy, [*model.variables, *optimizer.variables, *task.extra_variables(), step_counter]
        )
    step = int(step_counter.numpy())
    if resumed:
        logging.info("resuming %s from step %d of %d", cfg.model_dir, step, total_steps)
    logging.info(
        "fine-tuning %s (%s, %s): %d of %d variables train, %d steps of %d images (%d per epoch)",
        cfg.backbone.name,
        cfg.mode,
        cfg.objective + (f" + rotation aux {cfg.aux_rotation_weight}" if cfg.aux_rotation_weight else ""),
        len(variables),
        len(model.variables) + len(task.extra_variables()),
        total_steps,
        cfg.batch_size,
        steps_per_epoch,
    )

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
        trainable_variables=variables,
        step_counter=step_counter,
    )
    dataset = pipeline.train_dataset(
        x_train,
        y_train,
        global_batch_size=cfg.batch_size,
        seed=cfg.seed,
        start_step=step,
        transform=task.transform,
        pad=4,
        flip=True,
    )
    iterator = iter(cluster.distribute_dataset(strategy, dataset))
    writer = tf.summary.create_file_writer(workspace.path(cfg.model_dir, workspace.TENSORBOARD, "train"))
    if step == 0:
        with writer.as_default():
            summaries.write_config({**to_dict(cfg), "versions": versions()})
    validator = Validator(
        strategy,
        model,
        x_val,
        y_val,
        batch_size=cfg.val_batch_size,
        attack=cfg.attack,
        steps=cfg.val_attack_steps,
        seed=cfg.seed + 1,
        quiet=rt.quiet,
    )
    probe = {"inputs": pipeline.to_float(tf.constant(x_val[:8])), "labels": tf.constant(y_val[:8], tf.int32)}

    def image_fn():
        adv = task.craft(model, probe, tf.constant([cfg.seed, 7], tf.int64), False) if cfg.adversarial else None
        if adv is not None and cfg.aux_rotation_weight:
            adv = adv[: probe["inputs"].shape[0]]
        if adv is not None:
            tf.summary.image(
                "adversarial/clean|adv|perturbation", summaries.adversarial_grid(probe["inputs"], adv, cfg.attack.eps)
            )

    base_info = {
        "version": 1,
        "backbone": to_dict(cfg.backbone),
        "num_classes": data_info.num_classes,
        "data": {**data_info.to_dict(), "class_names": list(data_info.class_names)},
        "pretrained": {"path": cfg.pretrained, "task": info.get("task")} if info else None,
        "config": to_dict(cfg),
        "versions": versions(),
    }
    attack_info = {"name": "pgd_linf", "eps": cfg.attack.eps, "step_size": cfg.attack.step_size}
    selection = ModelSelection(
        workspace.path(cfg.model_dir, workspace.EXPORT),
        base_info,
        {**attack_info, "steps": cfg.val_attack_steps},
        tf.summary.create_file_writer(workspace.path(cfg.model_dir, workspace.TENSORBOARD, "validation")),
    )
    train_seconds = 0.0
    val_seconds = 0.0
    trained_steps = 0
    for point in validation_steps(total_steps, steps_per_epoch):
        if point > step:
            t0 = time.perf_counter()
            loop.run_loop(
                trainer,
                iterator,
                start_step=step,
                total_steps=point,
                manager=manager,
                writer=writer,
                steps_per_loop=rt.steps_per_loop,
                checkpoint_every=rt.checkpoint_every,
                image_summary_every=rt.image_summary_every,
                image_fn=image_fn,
                lr_fn=lambda s: float(lr(s)),
                quiet=rt.quiet,
            )
            train_seconds += time.perf_counter() - t0
            trained_steps += point - step
            step = point
        if point != step or cluster.chief_decides(strategy, selection.validated(point)):
            continue
        t0 = time.perf_counter()
        with loop.SignalGuard() as guard:
            stop = cluster.AgreedSignal(strategy, guard)  # every worker stops at the same batch
            metrics = validator(should_stop=stop.check)
            if metrics is None:  # the checkpoint of this step exists: a re-run validates it again
                raise loop.Interrupted(stop.signum, point)
            logging.info(
                "validation at epoch %.2f (step %d): clean accuracy %.4f, PGD-%d robust accuracy %.4f",
                point / steps_per_epoch,
                point,
                metrics["clean_accuracy"],
                cfg.val_attack_steps,
                metrics["robust_accuracy"],
            )
            selection.record(model, {"step": point, "epoch": round(point / steps_per_epoch, 4), **metrics})
        val_seconds += time.perf_counter() - t0
        if stop.check():
            raise loop.Interrupted(stop.signum, point)

    results = {
        "mode": cfg.mode,
        "objective": cfg.objective,
        "backbone": cfg.backbone.name,
        "pretrained": cfg.pretrained,
        "steps": total_steps,
        "epochs": round(total_steps / steps_per_epoch, 4),
        **selection.summary(),
    }
    results.update(
        wall_time_sec=time.time() - start_time,
        train_time_sec_this_session=train_seconds,
        train_steps_this_session=trained_steps,
        sec_per_epoch_train=(train_seconds / trained_steps * steps_per_epoch) if trained_steps else None,
        validation_time_sec_this_session=val_seconds,
        num_train_examples=len(x_train),
        num_validation_examples=len(x_val),
        data=data_info.to_dict(),
        versions=versions(),
    )
    workspace.write_json(workspace.path(cfg.model_dir, workspace.RESULTS), results)
    return results
