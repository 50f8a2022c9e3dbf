"""Flags shared by the binaries (data, attack, runtime, run directory), and the way every binary starts and exits.

Each flag is defined once, with a default, a help line with its unit, and a validator; the allowed values of
enumerations come from the code's own tables. Exit status: 0 done, 1 training failed (non-finite loss),
2 bad input (one line on stderr), 128+signal after SIGTERM/SIGINT (a checkpoint was saved).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from fractions import Fraction

from absl import app, flags

from advss_tf.errors import UsageError

FLAGS = flags.FLAGS


class FractionParser(flags.ArgumentParser):
    """Parses '8/255', '0.0314' or '2' as a float: ε and step sizes read as they are written in papers."""

    syntax_help = "a number or a fraction such as 8/255"

    def parse(self, argument):
        if isinstance(argument, (int, float)):
            return float(argument)
        try:
            return float(Fraction(str(argument).strip()))
        except (ValueError, ZeroDivisionError) as e:
            raise ValueError(f"{argument!r} is not a number or fraction") from e

    def flag_type(self):
        return "fraction"


def define_fraction(name: str, default: str, help_text: str) -> None:
    flags.DEFINE(FractionParser(), name, default, help_text, serializer=flags.ArgumentSerializer())


def define_run_flags() -> None:
    flags.DEFINE_string(
        "model_dir",
        None,
        "Run directory (config.json, checkpoints/, tensorboard/, export/); default: runs/<name of the run> under the "
        "current directory (pretrain: runs/<task>).",
    )
    flags.DEFINE_bool("overwrite", False, "Replace a different run's files in --model_dir instead of refusing.")
    flags.DEFINE_integer("seed", 0, "The one seed every random choice is derived from.")


def define_model_flags(backbone_default: str | None, backbone_help: str) -> None:
    """--backbone (choices: the backbone table) and --sync_bn. The binaries differ in --backbone's default: pretrain
    trains resnet18 unless told, finetune reads the export's (None)."""
    from advss_tf.models.backbones import BACKBONES

    flags.DEFINE_enum("backbone", backbone_default, sorted(BACKBONES), backbone_help)
    flags.DEFINE_bool("sync_bn", False, "Synchronise BatchNorm statistics across replicas (default: per replica).")


def define_length_flags() -> None:
    """How much a run trains: its global batch, epochs or steps, and the fraction of the training split."""
    flags.DEFINE_integer("batch_size", 128, "Global batch size in images (split evenly over the replicas).")
    flags.DEFINE_float(
        "epochs",
        100.0,
        "Training length in passes over the training split, fractions allowed (the reference: 100 for rotation, "
        "jigsaw and fine-tuning).",
    )
    flags.DEFINE_integer("train_steps", 0, "If > 0: train exactly this many optimizer steps (overrides --epochs).")
    flags.DEFINE_float("train_fraction", 1.0, "Class-balanced fraction of the training split to use, in (0, 1].")
    flags.register_validator("batch_size", lambda v: v >= 1, "--batch_size must be >= 1")
    flags.register_validator("epochs", lambda v: v >= 0, "--epochs must be >= 0 (0: give --train_steps)")
    flags.register_validator("train_steps", lambda v: v >= 0, "--train_steps must be >= 0 (0: use --epochs)")
    flags.register_validator("train_fraction", lambda v: 0 < v <= 1, "--train_fraction must be in (0, 1]")


def define_data_flags(train_split: bool = True) -> None:
    """--dataset and where it lives; `train_split`: also --train_split (the binaries that train)."""
    from advss_tf.data.datasets import DATASETS, LABELS

    flags.DEFINE_enum(
        "dataset",
        "sample",
        DATASETS,
        "Images: CIFAR-10 from the bundled sample, its official binary files (--data_dir) or TFDS; cifar100 (TFDS, "
        "or the official binary files with --data_dir); svhn (TFDS svhn_cropped); stl10 (TFDS, 96x96); folder "
        "(--data_dir: <class>/ subfolders of images, or any images for pretraining).",
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "cifar-10-batches-bin folder or cifar-10-binary.tar.gz (official binary format; implies --dataset=binary); "
        "with --dataset=cifar100 the cifar-100-binary folder or .tar.gz; with --dataset=folder the image folder.",
    )
    flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory (default ~/tensorflow_datasets).")
    flags.DEFINE_enum("label", "fine", LABELS, "CIFAR-100's labels: fine (100 classes) or coarse (20 superclasses).")
    flags.DEFINE_integer(
        "image_size", 0, "Resize every image to this many pixels square (0: keep the data's own size)."
    )
    flags.register_validator("image_size", lambda v: v >= 0, "--image_size must be >= 0 (0: the data's own size)")
    if train_split:
        flags.DEFINE_string(
            "train_split",
            "train",
            "The split training reads (a validation tenth is carved from it); STL-10 pretraining: unlabelled or "
            "train+unlabelled.",
        )


def define_attack_flags(steps_default: int = 10) -> None:
    from advss_tf.config import ATTACK_BN_MODES

    define_fraction("epsilon", "8/255", "L∞ attack radius on the [0,1] pixel scale (e.g. 8/255).")
    define_fraction("attack_step_size", "2/255", "PGD step size on the [0,1] pixel scale (e.g. 2/255).")
    flags.DEFINE_integer("attack_steps", steps_default, "PGD iterations while training.")
    flags.DEFINE_enum(
        "attack_bn", "train", ATTACK_BN_MODES, "BatchNorm mode while crafting training attacks (reference: train)."
    )
    flags.register_validator("epsilon", lambda v: 0 < v <= 1, "--epsilon must be in (0, 1] on the [0,1] pixel scale")
    flags.register_validator("attack_step_size", lambda v: v > 0, "--attack_step_size must be > 0")
    flags.register_validator("attack_steps", lambda v: v >= 1, "--attack_steps must be >= 1")


def define_optimizer_flags(lr: float, momentum: float, wd: float, schedule: str, warmup_steps: int) -> None:
    from advss_tf.config import OPTIMIZERS, SCHEDULES

    flags.DEFINE_enum(
        "optimizer", "sgd", OPTIMIZERS, "sgd (coupled L2 weight decay) or lars (ACL's LARS: decay in the trust ratio)."
    )
    flags.DEFINE_float("trust_coefficient", 1e-3, "LARS: the trust coefficient of the layer-wise rate.")
    flags.DEFINE_float("learning_rate", lr, "Peak learning rate.")
    flags.DEFINE_float("momentum", momentum, "SGD / LARS momentum.")
    flags.DEFINE_bool("nesterov", False, "Nesterov momentum.")
    flags.DEFINE_float("weight_decay", wd, "Coupled L2 weight decay (PyTorch SGD style) on every parameter.")
    flags.DEFINE_enum("lr_schedule", schedule, SCHEDULES, "Learning-rate schedule after the warm-up.")
    flags.DEFINE_float("final_lr", 1e-6, "Cosine schedule: learning rate at the last step.")
    flags.DEFINE_integer("warmup_steps", warmup_steps, "Epoch-0 linear warm-up length in steps (0: none).")
    flags.DEFINE_float("warmup_start_lr", 0.01, "Learning rate at step 0 of the warm-up.")
    flags.DEFINE_float(
        "warmup_epochs", 0.0, "warmup_cosine schedules: linear warm-up from 0 over this many epochs (ACL: 10)."
    )
    flags.DEFINE_list("lr_boundaries", [], "Step schedule: epochs at which the lr is multiplied by --lr_decay.")
    flags.DEFINE_float("lr_decay", 0.1, "Step schedule: the factor at each boundary.")
    flags.register_validator("learning_rate", lambda v: v > 0, "--learning_rate must be > 0")
    flags.register_validator("weight_decay", lambda v: v >= 0, "--weight_decay must be >= 0")
    flags.register_validator("trust_coefficient", lambda v: v > 0, "--trust_coefficient must be > 0")
    flags.register_validator("warmup_epochs", lambda v: v >= 0, "--warmup_epochs must be >= 0")


def define_runtime_flags() -> None:
    from advss_tf.config import MIXED_PRECISION, STRATEGIES
    from advss_tf.training.strategy import CLUSTER_RESOLVERS

    flags.DEFINE_enum(
        "strategy", "auto", STRATEGIES, "tf.distribute strategy (auto: Mirrored on GPUs, default on CPU)."
    )
    flags.DEFINE_integer("num_cpu_devices", 1, "Split the CPU into this many logical devices (data parallel on CPU).")
    flags.DEFINE_bool("jit_compile", False, "XLA-compile the replica step.")
    flags.DEFINE_enum("mixed_precision", "none", MIXED_PRECISION, "float16 (loss scaling, GPU) or bfloat16.")
    flags.DEFINE_integer("steps_per_loop", 10, "Training steps per host call (one tf.function).")
    flags.DEFINE_integer("checkpoint_every", 100, "Save a checkpoint every this many steps (and at the end).")
    flags.DEFINE_integer("image_summary_every", 500, "Write TensorBoard image grids every this many steps.")
    flags.DEFINE_bool("deterministic", False, "tf.config.experimental.enable_op_determinism() (slower).")
    flags.DEFINE_bool("quiet", False, "No progress bar: log lines at checkpoints only.")
    flags.DEFINE_enum(
        "cluster_resolver", "tf_config", CLUSTER_RESOLVERS, "--strategy=multi_worker: where the cluster is read from."
    )
    flags.DEFINE_integer(
        "worker_timeout",
        300,
        "--strategy=multi_worker: seconds before a silent worker or a stuck collective ends the run.",
    )
    flags.register_validator("worker_timeout", lambda v: v >= 1, "--worker_timeout must be >= 1 (seconds)")
    for name in ("num_cpu_devices", "steps_per_loop", "checkpoint_every", "image_summary_every"):
        flags.register_validator(name, lambda v: v >= 1, f"--{name} must be >= 1")


def runtime_config():
    from advss_tf.config import RuntimeConfig

    if FLAGS.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    return RuntimeConfig(
        strategy=FLAGS.strategy,
        num_cpu_devices=FLAGS.num_cpu_devices,
        jit_compile=FLAGS.jit_compile,
        mixed_precision=FLAGS.mixed_precision,
        steps_per_loop=FLAGS.steps_per_loop,
        checkpoint_every=FLAGS.checkpoint_every,
        image_summary_every=FLAGS.image_summary_every,
        quiet=FLAGS.quiet,
        cluster_resolver=FLAGS.cluster_resolver,
        worker_timeout=FLAGS.worker_timeout,
    )


def data_source():
    """The data source; a given --data_dir is always used (alone it means --dataset=binary), never ignored."""
    from advss_tf.data.datasets import DataSource

    dataset = FLAGS.dataset
    if FLAGS.data_dir:
        if FLAGS["dataset"].present and dataset not in ("binary", "cifar100", "folder"):
            raise UsageError(
                f"--data_dir reads the official binary files or an image folder; it does not go with "
                f"--dataset={dataset} (drop one of them, or use --tfds_data_dir for TFDS)"
            )
        if not FLAGS["dataset"].present:
            dataset = "binary"
    train_split = FLAGS.train_split if "train_split" in FLAGS else "train"
    return DataSource(dataset, FLAGS.data_dir, FLAGS.tfds_data_dir, FLAGS.label, FLAGS.image_size, train_split)


def attack_config():
    from advss_tf.config import AttackConfig

    return AttackConfig(FLAGS.epsilon, FLAGS.attack_step_size, FLAGS.attack_steps, FLAGS.attack_bn)


def optimizer_config():
    from advss_tf.config import OptimizerConfig

    try:
        boundaries = tuple(int(b) for b in FLAGS.lr_boundaries)
    except ValueError as e:
        raise UsageError(f"--lr_boundaries must be integers (epochs), got {FLAGS.lr_boundaries}") from e
    return OptimizerConfig(
        learning_rate=FLAGS.learning_rate,
        momentum=FLAGS.momentum,
        nesterov=FLAGS.nesterov,
        weight_decay=FLAGS.weight_decay,
        schedule=FLAGS.lr_schedule,
        final_lr=FLAGS.final_lr,
        warmup_steps=FLAGS.warmup_steps,
        warmup_start_lr=FLAGS.warmup_start_lr,
        boundaries_epochs=boundaries,
        decay_factor=FLAGS.lr_decay,
        optimizer=FLAGS.optimizer,
        trust_coefficient=FLAGS.trust_coefficient,
        warmup_epochs=FLAGS.warmup_epochs,
    )


def training_config_fields() -> dict:
    """The fields every training config (PretrainConfig, FinetuneConfig) takes from the shared flags."""
    return dict(
        data=data_source(),
        train_fraction=FLAGS.train_fraction,
        batch_size=FLAGS.batch_size,
        epochs=FLAGS.epochs,
        train_steps=FLAGS.train_steps,
        attack=attack_config(),
        optimizer=optimizer_config(),
        seed=FLAGS.seed,
        runtime=runtime_config(),
    )


def print_run_paths(model_dir: str, export: str) -> None:
    """Tells the user where the run, its TensorBoard logs and its export are (the run directory may be a default)."""
    import os

    from advss_tf import workspace

    tensorboard = workspace.path(model_dir, workspace.TENSORBOARD)
    print(
        f"run directory: {os.path.abspath(model_dir)} (TensorBoard: tensorboard --logdir {tensorboard}; "
        f"export: {workspace.path(model_dir, workspace.EXPORT, export)})",
        flush=True,
    )


def fail(message: str, status: int = 2) -> None:
    """One line on stderr, then exit."""
    first = " ".join(str(message).split("\n")[0].split())
    sys.stderr.write(f"error: {first}\n")
    sys.stderr.flush()
    sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with a bad flag as one line and exit 2 (every binary's `flags_parser`)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(str(e))


def run_binary(main: Callable[[], None]) -> None:
    """app.run with the project's exit contract (see module docstring)."""

    def _main(argv):
        import logging as std_logging

        from absl import logging

        # TensorFlow's saver/export INFO lines go through absl too; keep ours, drop theirs below WARNING.
        std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
        logging.get_absl_handler().addFilter(
            lambda r: r.levelno >= std_logging.WARNING or "site-packages/tensorflow" not in r.pathname
        )
        if len(argv) > 1:
            fail(f"unexpected positional arguments: {' '.join(argv[1:])}")
        from advss_tf.training.loop import Interrupted, TrainingError

        try:
            main()
        except UsageError as e:
            fail(str(e))
        except TrainingError as e:
            fail(str(e), status=1)
        except Interrupted as e:
            fail(str(e), status=128 + e.signum)

    app.run(_main, flags_parser=parse_flags)
