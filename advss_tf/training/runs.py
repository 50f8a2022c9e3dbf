"""The run skeleton: the one sequence every training run goes through, whatever it trains.

`run(cfg, kind)` owns it — strategy → this worker's run directory (the chief writes, the others scratch) → the
training images and their split → config.json (identity, --overwrite) → precision → steps → seed → in the strategy
scope the kind's task and model, the optimizer, the checkpoint, restore-or-init and the chief's broadcast →
`Trainer` → input pipeline → TensorBoard → the kind's training → the final checkpoint → the kind's exports and
results → results.json. A kind of run (`pretraining.PretrainRun`, `finetuning.FinetuneRun`) is a `RunKind`: it
says what it needs of the data, builds its task and model, and drives its training through the `Session` it is
handed (one loop to the end, or loops with validation between), as Model Garden's trainer runs every `Task`.

The pieces are public for the tools that time a step without a run directory (tools/pretrain_step.py: `build`,
`make_trainer`, `input_iterator`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from advss_tf import faults, machine, summaries, workspace
from advss_tf.config import to_dict, versions
from advss_tf.data import datasets, pipeline
from advss_tf.errors import UsageError
from advss_tf.training import cluster, loop
from advss_tf.training.lars import LARS
from advss_tf.training.schedules import LearningRate
from advss_tf.training.strategy import make_strategy, per_replica_batch


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The training split's images cut into what trains and the held-out validation tenth, and what they hold."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    info: datasets.DatasetInfo


@dataclasses.dataclass(frozen=True)
class Built:
    """What a kind builds in the strategy scope.

    Attributes:
      task: what the `Trainer` runs (`tasks.base.Task`).
      model: the Keras model the checkpoint saves as `model`.
      variables: the variables that train (the optimizer is built on them).
      checkpoint_items: the task's own state saved next to the model (name → trackable).
      must_match: of those, the ones a resumed checkpoint must hold unchanged (the jigsaw permutations).
      broadcast: variables outside the model whose chief's values every worker takes (a task's own head).
    """

    task: Any
    model: keras.Model
    variables: list
    checkpoint_items: dict[str, Any] = dataclasses.field(default_factory=dict)
    must_match: dict[str, tf.Variable] = dataclasses.field(default_factory=dict)
    broadcast: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Session:
    """A run in progress, as the skeleton hands it to its kind after the restore."""

    cfg: Any  # the run's config, with this worker's model_dir
    strategy: tf.distribute.Strategy
    data: TrainingData
    steps_per_epoch: int
    total_steps: int
    built: Built
    optimizer: keras.optimizers.Optimizer
    learning_rate: LearningRate
    step_counter: tf.Variable
    manager: tf.train.CheckpointManager
    trainer: loop.Trainer
    iterator: Any
    writer: tf.summary.SummaryWriter
    start_time: float  # time.time() when `run` began
    image_fn: Callable[[], None] | None = None  # the kind's TensorBoard pictures
    train_seconds: float = 0.0  # in `train_to`, this session
    trained_steps: int = 0

    @property
    def step(self) -> int:
        return int(self.step_counter.numpy())

    def train_to(self, point: int) -> dict[str, float]:
        """Trains from the current step to `point` (checkpoints, signals, NaN guard: `loop.run_loop`); returns the
        metrics of the last loop ({} when there was nothing left to train)."""
        start, rt = self.step, self.cfg.runtime
        t0 = time.perf_counter()
        last = loop.run_loop(
            self.trainer,
            self.iterator,
            start_step=start,
            total_steps=point,
            manager=self.manager,
            writer=self.writer,
            steps_per_loop=rt.steps_per_loop,
            checkpoint_every=rt.checkpoint_every,
            image_summary_every=rt.image_summary_every,
            image_fn=self.image_fn,
            lr_fn=lambda s: float(self.learning_rate(s)),
            quiet=rt.quiet,
        )
        self.train_seconds += time.perf_counter() - t0
        self.trained_steps += max(point - start, 0)
        return last

    def save_final(self) -> None:
        """Checkpoints the current step unless the latest checkpoint already holds it."""
        latest = self.manager.latest_checkpoint
        if latest is None or self.step > int(latest.rsplit("-", 1)[-1]):
            self.manager.save(checkpoint_number=self.step, options=faults.checkpoint_options())


class RunKind:
    """What one kind of run brings to the skeleton. A kind implements `build` and `finish`; the other hooks default
    to "nothing to add" (and `train` to one loop to the last step)."""

    labels_for: str | None = None  # the run's purpose when it needs labels ("fine-tuning"): unlabelled data is refused

    def resolve(self, cfg):
        """Settles what the config leaves open before anything starts (fine-tuning: the export's backbone)."""
        return cfg

    def batch_sizes(self, cfg) -> tuple[int, ...]:
        """Every global batch size the run splits over the replicas."""
        return (cfg.batch_size,)

    def check_data(self, cfg, data: TrainingData) -> TrainingData:
        """Refuses data the run cannot use, before anything is written; may trim it."""
        return data

    def build(self, cfg, data_info: datasets.DatasetInfo) -> Built:
        """Task and model, in the strategy scope after the seed was set."""
        raise NotImplementedError

    def augmentation(self, cfg) -> dict[str, Any]:
        """The clean batch's augmentation (`pipeline.train_dataset`'s pad / flip)."""
        return dict(pad=4, flip=True)

    def started(self, session: Session) -> None:
        """Called once the model is restored or initialised (a log line of what trains)."""

    def image_fn(self, session: Session) -> Callable[[], None] | None:
        """Writes the run's TensorBoard pictures (in the writer's default context); None: none."""
        return None

    def train(self, session: Session) -> Any:
        """Trains to `session.total_steps`; returns what `finish` needs."""
        return session.train_to(session.total_steps)

    def finish(self, session: Session, trained: Any) -> dict[str, Any]:
        """Exports and the results dict (the skeleton writes it to results.json), after the final checkpoint."""
        raise NotImplementedError


def run(cfg, kind: RunKind, overwrite: bool = False) -> dict[str, Any]:
    """Trains (or resumes) the run of `kind` in `cfg.model_dir`; returns the results `kind.finish` made."""
    start_time = time.time()
    cfg = kind.resolve(cfg)  # a foreign or missing input fails before anything is written
    rt = cfg.runtime
    strategy = make_strategy(rt.strategy, rt.num_cpu_devices, rt.cluster_resolver, rt.worker_timeout)
    cfg = dataclasses.replace(cfg, model_dir=cluster.worker_model_dir(strategy, cfg.model_dir))
    for size in kind.batch_sizes(cfg):
        per_replica_batch(size, strategy)
    # Bad data fails before anything is written.
    data = kind.check_data(cfg, load_training_images(cfg, purpose=kind.labels_for))
    workspace.prepare(cfg.model_dir, cfg, overwrite, data.info.to_dict())
    set_precision(rt.mixed_precision)
    steps_per_epoch = len(data.x_train) // cfg.batch_size
    if steps_per_epoch < 1:
        raise UsageError(f"batch size {cfg.batch_size} is larger than the {len(data.x_train)} training images")
    total_steps = loop.steps_for(cfg.epochs, cfg.train_steps, steps_per_epoch)

    keras.utils.set_random_seed(cfg.seed)  # weight initialisation (a new head, a from-scratch backbone) follows --seed
    built, optimizer, lr = build(kind, cfg, strategy, data.info, steps_per_epoch, total_steps)
    with strategy.scope():
        expected = {name: (var, var.numpy().copy()) for name, var in built.must_match.items()}
        step_counter = new_step_counter()
        checkpoint = tf.train.Checkpoint(
            model=built.model,
            optimizer=optimizer,
            step=step_counter,
            random_state=loop.seed_generator_states(built.model),  # the dropout masks continue where they were
            **built.checkpoint_items,
        )
        manager = tf.train.CheckpointManager(
            checkpoint, workspace.path(cfg.model_dir, workspace.CHECKPOINTS), max_to_keep=rt.max_checkpoints
        )
        cluster.create_save_counter(strategy, checkpoint)
        resumed = restore_or_init(manager, checkpoint, expected)
        cluster.broadcast_from_chief(
            strategy, [*built.model.variables, *optimizer.variables, *built.broadcast, step_counter]
        )
    start_step = int(step_counter.numpy())
    if resumed:
        logging.info("resuming %s from step %d of %d", cfg.model_dir, start_step, total_steps)

    writer = tf.summary.create_file_writer(workspace.path(cfg.model_dir, workspace.TENSORBOARD, "train"))
    if start_step == 0:
        with writer.as_default():
            summaries.write_config({**to_dict(cfg), "versions": versions()})
    session = Session(
        cfg=cfg,
        strategy=strategy,
        data=data,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        built=built,
        optimizer=optimizer,
        learning_rate=lr,
        step_counter=step_counter,
        manager=manager,
        trainer=make_trainer(cfg, strategy, built, optimizer, step_counter),
        iterator=input_iterator(kind, cfg, strategy, built.task, data.x_train, data.y_train, start_step),
        writer=writer,
        start_time=start_time,
    )
    kind.started(session)
    session.image_fn = kind.image_fn(session)
    trained = kind.train(session)
    session.save_final()
    results = kind.finish(session, trained)
    workspace.write_json(workspace.path(cfg.model_dir, workspace.RESULTS), results)
    return results


# -- the pieces ------------------------------------------------------------------------------------------------------
def build(
    kind: RunKind, cfg, strategy: tf.distribute.Strategy, data_info, steps_per_epoch: int, total_steps: int
) -> tuple[Built, keras.optimizers.Optimizer, LearningRate]:
    """The kind's task and model and their optimizer, in the strategy scope."""
    with strategy.scope():
        built = kind.build(cfg, data_info)
        optimizer, lr = make_optimizer(cfg, steps_per_epoch, total_steps, cfg.runtime.mixed_precision)
        optimizer.build(built.variables)  # Keras 3 under MirroredStrategy: build inside the scope
    return built, optimizer, lr


def make_trainer(
    cfg, strategy: tf.distribute.Strategy, built: Built, optimizer, step_counter: tf.Variable | None = None
) -> loop.Trainer:
    """The `Trainer` of a run's config: its batch, weight decay, attack and runtime."""
    return loop.Trainer(
        strategy,
        built.task,
        built.model,
        optimizer,
        global_batch_size=cfg.batch_size,
        weight_decay=coupled_weight_decay(cfg.optimizer),
        adversarial=cfg.adversarial,
        attack_bn_train=cfg.attack.bn == "train",
        jit_compile=cfg.runtime.jit_compile,
        trainable_variables=built.variables,
        step_counter=step_counter,
    )


def input_iterator(
    kind: RunKind, cfg, strategy: tf.distribute.Strategy, task, images, labels, start_step: int = 0
) -> Any:
    """Endless distributed batches from global step `start_step`, augmented and transformed as the kind trains."""
    dataset = pipeline.train_dataset(
        images,
        labels,
        global_batch_size=cfg.batch_size,
        seed=cfg.seed,
        start_step=start_step,
        transform=task.transform,
        # A task whose inputs follow training's progress (tasks/base.py: `step_transform`) gets the step as well.
        step_transform=getattr(task, "step_transform", None),
        **kind.augmentation(cfg),
    )
    return iter(cluster.distribute_dataset(strategy, dataset))


def set_precision(mode: str) -> None:
    """Keras global dtype policy; float16 also wraps the optimizer in loss scaling (see `make_optimizer`)."""
    warning = precision_warning(mode, bool(tf.config.list_logical_devices("GPU")), machine.has_amx_bf16())
    if warning:
        logging.warning(warning)
    keras.mixed_precision.set_dtype_policy(
        {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}[mode]
    )


def precision_warning(mode: str, on_gpu: bool, amx_bf16: bool | None) -> str | None:
    """What a user should hear before a 16-bit run that will be slower than float32, else None.

    bfloat16 on a CPU without AMX: oneDNN has no bfloat16 matrix units to use, so it converts to float32 and back
    around every convolution, and the step is slower than in float32 (docs/benchmarks.md measures it). Unknown CPU
    flags (no /proc/cpuinfo) say nothing rather than guess.
    """
    if mode == "bfloat16" and not on_gpu and amx_bf16 is False:
        return (
            "--mixed_precision=bfloat16 on a CPU without AMX (no amx_bf16 flag): bfloat16 is emulated through float32 "
            "here and a step is slower than with --mixed_precision=none (docs/benchmarks.md)"
        )
    return None


def coupled_weight_decay(opt_cfg) -> float:
    """The L2 the loop adds to the loss: SGD's weight decay; none for LARS, which applies its own."""
    return opt_cfg.weight_decay if opt_cfg.optimizer == "sgd" else 0.0


def make_optimizer(cfg, steps_per_epoch: int, total_steps: int, mixed_precision: str):
    opt_cfg = cfg.optimizer
    lr = LearningRate(
        opt_cfg.schedule,
        opt_cfg.learning_rate,
        total_steps,
        steps_per_epoch,
        warmup_steps=opt_cfg.warmup_steps,
        warmup_start_lr=opt_cfg.warmup_start_lr,
        final_lr=opt_cfg.final_lr,
        boundaries_epochs=opt_cfg.boundaries_epochs,
        decay_factor=opt_cfg.decay_factor,
        warmup_epochs=opt_cfg.warmup_epochs,
    )
    if opt_cfg.optimizer == "lars":  # weight decay inside the trust ratio (`coupled_weight_decay` leaves it out)
        opt = LARS(
            learning_rate=lr,
            momentum=opt_cfg.momentum,
            weight_decay_rate=opt_cfg.weight_decay,
            trust_coefficient=opt_cfg.trust_coefficient,
        )
    else:
        opt = keras.optimizers.SGD(learning_rate=lr, momentum=opt_cfg.momentum, nesterov=opt_cfg.nesterov)
    if mixed_precision == "float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt, lr


def load_training_images(cfg, purpose: str | None = None) -> TrainingData:
    """The training split, cut into what trains and the validation tenth, and what it holds.

    Args:
      cfg: a run config (its `data`, `seed`, `train_fraction`).
      purpose: set when the run needs labels (fine-tuning): an unlabelled source is then a UsageError.
    """
    split = datasets.load(cfg.data, cfg.data.train_split)
    if purpose:
        datasets.require_labelled(split, cfg.data, purpose)
    images, labels = split.images, split.labels
    if len(images) < 2:
        raise UsageError(f"{datasets.describe(cfg.data)} has {len(images)} training image(s); training needs more")
    train_idx, val_idx = split_indices(labels, cfg)
    return TrainingData(images[train_idx], labels[train_idx], images[val_idx], labels[val_idx], split.info)


def split_indices(labels: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation) into the training split of what trains and the held-out tenth (`cfg.seed`,
    `cfg.train_fraction`): `load_training_images`' cut, for anything labelled in the split's own order."""
    train_idx, val_idx = pipeline.train_val_split(labels, cfg.seed)
    return pipeline.class_balanced_subset(labels, train_idx, cfg.train_fraction, cfg.seed), val_idx


def new_step_counter() -> tf.Variable:
    """The run's step (int64, checkpointed, advanced by the loop): start step, data position and checkpoint numbers.

    Not the optimizer's `iterations`: under float16 loss scaling that one stays put on the steps it skips.
    """
    return tf.Variable(0, dtype=tf.int64, trainable=False, name="step")


def restore_or_init(manager: tf.train.CheckpointManager, checkpoint: tf.train.Checkpoint, expected: dict) -> bool:
    """Restores the latest checkpoint (inside the strategy scope, so optimizer slots are mirrored)."""
    latest = manager.latest_checkpoint
    if not latest:
        return False
    try:
        checkpoint.restore(latest).assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        raise UsageError(f"checkpoint {latest} does not fit this task/model: {str(e).splitlines()[0][:200]}") from e
    for name, (var, value) in expected.items():
        if not np.array_equal(var.numpy(), value):
            raise UsageError(f"checkpoint {latest} was made with other {name}; use another --model_dir")
    return True
