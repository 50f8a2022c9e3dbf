"""Seconds per training step of any pretext task or of fine-tuning (adversarial by default), and peak memory.

    python tools/benchmark_step.py --task=jigsaw --backbone=resnet18 --batch_size=128 --steps=3
    python tools/benchmark_step.py --task=finetune --objective=trades --backbone=resnet18 --batch_size=128
    python tools/benchmark_step.py --task=finetune --backbone=resnet18 --arch_versions=1,2   # old vs new block
    python tools/benchmark_step.py --task=jigsaw --backbone=resnet18 --roofline   # GFLOP/s beside the ceilings

Builds the task's model and the real distributed train step (the same `Trainer` the binary uses) on real CIFAR-10
images, runs one warm-up step (tracing), then times `--steps` steps one host call each. Prints one JSON line per
architecture version; with several (`--arch_versions=1,2`) the steps of the versions alternate, so a change of load
on the machine falls on both alike.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from absl import app, flags
from pretrain_step import FINETUNE, build_step

import advss_tf  # noqa: F401  (TF_ENABLE_ONEDNN_OPTS before TensorFlow)
from advss_tf.config import FINETUNE_MODES, FINETUNE_OBJECTIVES, MIXED_PRECISION
from advss_tf.machine import cpu_model
from advss_tf.models.backbones import BACKBONES
from advss_tf.models.layers import AUTO, BATCH_NORM_LAYERS
from advss_tf.tasks.table import TASKS

flags.DEFINE_enum(
    "task", "jigsaw", [*sorted(TASKS), FINETUNE], "Pretext task, or finetune (the fine-tune binary's step)."
)
flags.DEFINE_enum(
    "objective", "adversarial", list(FINETUNE_OBJECTIVES), "With --task=finetune: the fine-tuning objective."
)
flags.DEFINE_enum("mode", "full", list(FINETUNE_MODES), "With --task=finetune: which parts train.")
flags.DEFINE_enum("backbone", "resnet18", sorted(BACKBONES), "Backbone.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("steps", 3, "Timed steps (after one warm-up step).")
flags.DEFINE_integer("attack_steps", 10, "PGD steps inside each training step.")
flags.DEFINE_bool("adversarial", True, "Adversarial step (PGD inside) or standard.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the replica step.")
flags.DEFINE_string("strategy", "auto", "auto | mirrored | one_device.")
flags.DEFINE_enum("mixed_precision", "none", MIXED_PRECISION, "As the binaries' --mixed_precision.")
flags.DEFINE_enum(
    "batch_norm",
    AUTO,
    [AUTO, *sorted(BATCH_NORM_LAYERS)],
    "BatchNormalization layer: auto = the binary's (fused; Keras' for the ensemble), or force fused / keras.",
)
flags.DEFINE_list(
    "arch_versions", ["2"], "Block definitions to time side by side (models/resnet.py: 2 the reference's, 1 the old)."
)
flags.DEFINE_integer("selfie_layers", 13, "Selfie transformer layers.")
flags.DEFINE_integer("selfie_heads", 16, "Selfie attention heads.")
flags.DEFINE_integer("selfie_ff_dim", 2048, "Selfie feed-forward width.")
flags.DEFINE_bool(
    "roofline",
    False,
    "Also measure a large matmul's and a 3x3 convolution's GFLOP/s in this run (tools/roofline.py) and report the "
    "step's GFLOP/s beside them (rotation, jigsaw and finetune: tasks whose step is the model on batch['inputs']).",
)
FLAGS = flags.FLAGS
ROOFLINE_TASKS = ("rotation", "jigsaw", FINETUNE)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def step_gflop(step, batch_size: int) -> float:
    """GFLOP of one training step (tools/roofline.py): 3 x the loss's forward FLOPs (the update's forward and
    backward; the loss holds the clean and, adversarially, the adversarial forward) + 2K x one forward (K attack
    steps, each a forward and a backward to the input), counted by TF's graph profiler at the real shapes."""
    import roofline
    import tensorflow as tf

    from advss_tf.data import cifar10

    split = cifar10.load(cifar10.DataSource(), "train")
    images = tf.convert_to_tensor(split.images[:batch_size], tf.float32) / 255.0
    labels = tf.convert_to_tensor(split.labels[:batch_size], tf.int32)
    batch = step.task.transform(images, labels, tf.constant([0, 0], tf.int64))
    spec = tf.TensorSpec(batch["inputs"].shape, batch["inputs"].dtype)
    forward = roofline.graph_flops(lambda x: step.model(x, training=True), spec)
    adversarial = bool(step.config.adversarial)

    def loss_of(x):
        return step.task.losses(step.model, {**batch, "inputs": x}, x if adversarial else None)[0]

    loss_forward = roofline.graph_flops(loss_of, spec)
    attack = 2 * FLAGS.attack_steps * forward if adversarial else 0
    return (3 * loss_forward + attack) / 1e9


def main(argv):
    del argv
    import os

    import tensorflow as tf

    from advss_tf.models.backbones import ARCH_VERSIONS

    if FLAGS.roofline and FLAGS.task not in ROOFLINE_TASKS:
        raise app.UsageError(f"--roofline counts the step of {', '.join(ROOFLINE_TASKS)} only")
    versions = [int(v) for v in FLAGS.arch_versions]
    if not versions or any(v not in ARCH_VERSIONS for v in versions):
        raise app.UsageError(f"--arch_versions: each of {', '.join(map(str, ARCH_VERSIONS))}")
    common = dict(
        attack_steps=FLAGS.attack_steps,
        jit_compile=FLAGS.jit_compile,
        strategy=FLAGS.strategy,
        mixed_precision=FLAGS.mixed_precision,
        train_steps=FLAGS.steps + 1,
        batch_norm=FLAGS.batch_norm,
    )
    if FLAGS.task == FINETUNE:
        # The objective decides whether the step is adversarial (standard: no attack), as in the binary.
        fields = dict(objective=FLAGS.objective, mode=FLAGS.mode)
    else:
        fields = dict(
            adversarial=FLAGS.adversarial,
            selfie_layers=FLAGS.selfie_layers,
            selfie_heads=FLAGS.selfie_heads,
            selfie_ff_dim=FLAGS.selfie_ff_dim,
        )
    steps = {
        version: build_step(FLAGS.task, FLAGS.backbone, FLAGS.batch_size, arch_version=version, **common, **fields)
        for version in versions
    }
    rss_before_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    warmup, times, cpu = {}, {v: [] for v in versions}, dict.fromkeys(versions, 0.0)
    for version, step in steps.items():
        t0 = time.perf_counter()
        step.trainer.train(step.iterator, 1)
        warmup[version] = time.perf_counter() - t0
    for _ in range(FLAGS.steps):
        for version, step in steps.items():  # interleaved: the versions share whatever load the machine has
            cpu0, t0 = _cpu_seconds(), time.perf_counter()
            step.trainer.train(step.iterator, 1)
            times[version].append(time.perf_counter() - t0)
            cpu[version] += _cpu_seconds() - cpu0
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if FLAGS.roofline:
        import roofline

        ceilings = roofline.ceilings()
    for version, step in steps.items():
        t = times[version]
        result = {
            "task": FLAGS.task,
            **({"objective": FLAGS.objective, "mode": FLAGS.mode} if FLAGS.task == FINETUNE else {}),
            "backbone": FLAGS.backbone,
            "arch_version": version,
            "batch_size": FLAGS.batch_size,
            "adversarial": bool(step.config.adversarial),
            "attack_steps": FLAGS.attack_steps,
            "jit_compile": FLAGS.jit_compile,
            "mixed_precision": FLAGS.mixed_precision,
            "batch_norm": FLAGS.batch_norm,
            "params": int(step.model.count_params()),
            "first_step_sec_incl_tracing": round(warmup[version], 2),
            "step_sec": [round(x, 2) for x in t],
            "mean_step_sec": round(sum(t) / len(t), 2),
            "images_per_sec": round(FLAGS.batch_size * len(t) / sum(t), 1),
            "cpu_percent_during_steps": round(100 * cpu[version] / sum(t)),
            "peak_rss_gib": round(peak_rss_gib, 2),
            "peak_rss_before_first_step_gib": round(rss_before_gib, 2),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "tensorflow": tf.__version__,
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
        }
        if FLAGS.roofline:
            gflop = step_gflop(step, FLAGS.batch_size)
            result.update(step_gflop=round(gflop, 1), step_gflops=round(gflop * len(t) / sum(t), 1), **ceilings)
        print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
