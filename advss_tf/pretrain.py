"""Adversarial (or standard) self-supervised pretraining: `python -m advss_tf.pretrain --task=jigsaw ...`.

Writes <model_dir>/{config.json, checkpoints/, tensorboard/, export/pretrain/, results.json}; re-running the same
command resumes. See WORKSPACE.md and `--helpfull`.
"""

from __future__ import annotations

import os

from absl import flags

import advss_tf  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow is imported)
from advss_tf import common_flags
from advss_tf.models.backbones import BACKBONES
from advss_tf.tasks.table import TASKS

FLAGS = flags.FLAGS

flags.DEFINE_enum("task", None, sorted(TASKS), "Pretext task.")
flags.mark_flag_as_required("task")
flags.DEFINE_enum("backbone", "resnet18", sorted(BACKBONES), "Backbone (the paper: resnet50v2).")
flags.DEFINE_bool("sync_bn", False, "Synchronise BatchNorm statistics across replicas (default: per replica).")
flags.DEFINE_bool("adversarial", True, "Adversarial pretraining (loss 0.5·(clean + PGD)); --noadversarial: standard.")
flags.DEFINE_integer("batch_size", 128, "Global batch size (split evenly over the replicas).")
flags.DEFINE_float("epochs", 100.0, "Training epochs over the training split (the reference: 100 rotation/jigsaw).")
flags.DEFINE_integer("train_steps", 0, "If > 0: train exactly this many steps (overrides --epochs).")
flags.DEFINE_float("train_fraction", 1.0, "Class-balanced fraction of the training split to use (0, 1].")
flags.DEFINE_integer("jigsaw_permutations", 30, "Jigsaw: random permutations drawn from --seed (+ identity).")
flags.DEFINE_float("jigsaw_identity_prob", 0.1, "Jigsaw: probability a label is forced to the identity.")
flags.DEFINE_integer("selfie_layers", 13, "Selfie: transformer encoder layers.")
flags.DEFINE_integer("selfie_heads", 16, "Selfie: attention heads.")
flags.DEFINE_integer("selfie_ff_dim", 2048, "Selfie: transformer feed-forward width.")
flags.DEFINE_float("selfie_dropout", 0.1, "Selfie: transformer dropout.")
flags.DEFINE_float(
    "selfie_logit_scale",
    0.0,
    "Selfie: factor on the query-patch dot products; 0 = 1/sqrt(trunk width), 1 = the reference's raw products.",
)
flags.DEFINE_float("diversity_weight", 0.1, "Ensemble: λ of the gradient-diversity regulariser h.")
flags.register_validator("batch_size", lambda v: v >= 1, "--batch_size must be >= 1")
flags.register_validator("train_fraction", lambda v: 0 < v <= 1, "--train_fraction must be in (0, 1]")

common_flags.define_run_flags()
common_flags.define_data_flags()
common_flags.define_attack_flags(steps_default=10)
# Defaults: the reference's latest train_adv_rotation.py / train_adv_jigsaw.py (flags/paper has every task's).
common_flags.define_optimizer_flags(lr=0.1, momentum=0.9, wd=3e-4, schedule="cosine", warmup_steps=200)
common_flags.define_runtime_flags()


def config_from_flags():
    from advss_tf.config import PretrainConfig
    from advss_tf.models.backbones import BackboneConfig

    return PretrainConfig(
        task=FLAGS.task,
        model_dir=FLAGS.model_dir or os.path.join("runs", FLAGS.task),
        backbone=BackboneConfig(FLAGS.backbone, FLAGS.sync_bn),
        data=common_flags.data_source(),
        train_fraction=FLAGS.train_fraction,
        batch_size=FLAGS.batch_size,
        epochs=FLAGS.epochs,
        train_steps=FLAGS.train_steps,
        adversarial=FLAGS.adversarial,
        attack=common_flags.attack_config(),
        optimizer=common_flags.optimizer_config(),
        seed=FLAGS.seed,
        jigsaw_permutations=FLAGS.jigsaw_permutations,
        jigsaw_identity_prob=FLAGS.jigsaw_identity_prob,
        selfie_layers=FLAGS.selfie_layers,
        selfie_heads=FLAGS.selfie_heads,
        selfie_ff_dim=FLAGS.selfie_ff_dim,
        selfie_dropout=FLAGS.selfie_dropout,
        selfie_logit_scale=FLAGS.selfie_logit_scale,
        diversity_weight=FLAGS.diversity_weight,
        runtime=common_flags.runtime_config(),
    )


def main() -> None:
    from absl import logging

    from advss_tf.training import cluster, pretraining

    cfg = config_from_flags()
    common_flags.print_run_paths(cfg.model_dir, pretraining.PRETRAIN_EXPORT)
    with cluster.lost_worker_errors(FLAGS.strategy == "multi_worker"):
        results = pretraining.run(cfg, overwrite=FLAGS.overwrite)
    logging.info("done: %d steps, export at %s", results["steps"], results["export"])
    print(f"pretraining done: {results['steps']} steps; SavedModel at {results['export']}")


def run() -> None:
    common_flags.run_binary(main)


if __name__ == "__main__":
    run()
