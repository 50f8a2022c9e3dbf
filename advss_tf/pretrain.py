"""Adversarial (or standard) self-supervised pretraining: `python -m advss_tf.pretrain --task=jigsaw ...`.

Writes <model_dir>/{config.json, checkpoints/, tensorboard/, export/pretrain/, results.json}; re-running the same
command resumes. See WORKSPACE.md and `--helpfull`.
"""

from __future__ import annotations

import os

from absl import flags

import advss_tf  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow is imported)
from advss_tf import common_flags
from advss_tf.tasks.table import TASKS

FLAGS = flags.FLAGS

flags.DEFINE_enum("task", None, sorted(TASKS), "Pretext task.")
flags.mark_flag_as_required("task")
common_flags.define_model_flags("resnet18", "Backbone (the paper: resnet50v2).")
flags.DEFINE_bool("adversarial", True, "Adversarial pretraining (loss 0.5·(clean + PGD)); --noadversarial: standard.")
common_flags.define_length_flags()
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
flags.DEFINE_float("temperature", 0.5, "acl / dynacl: NT-Xent's temperature τ.")
flags.DEFINE_bool("air", False, "acl / dynacl: add AIR's standard- and adversarial-invariant regularisers (and loss).")
flags.DEFINE_float("air_sir_weight", 0.5, "AIR: λ1, the weight of the standard-invariant regulariser.")
flags.DEFINE_float("air_air_weight", 0.5, "AIR: λ2, the weight of the adversarial-invariant regulariser.")
flags.DEFINE_integer("dynacl_period", 50, "dynacl: K, epochs between changes of the augmentation strength.")
flags.DEFINE_float("dynacl_swap_param", 2 / 3, "dynacl: λ of the adversarial loss weight (their swap_param).")
flags.DEFINE_float("dynacl_encoder_momentum", 0.99, "dynacl: momentum m of the key encoder (without --air).")

common_flags.define_run_flags()
common_flags.define_data_flags()
common_flags.define_attack_flags(steps_default=10)
# Defaults: the reference's latest train_adv_rotation.py / train_adv_jigsaw.py (flags/paper has every task's).
common_flags.define_optimizer_flags(lr=0.1, momentum=0.9, wd=3e-4, schedule="cosine", warmup_steps=200)
common_flags.define_runtime_flags()


def config_from_flags():
    from advss_tf.config import ContrastiveConfig, PretrainConfig
    from advss_tf.models.backbones import BackboneConfig

    return PretrainConfig(
        task=FLAGS.task,
        model_dir=FLAGS.model_dir or os.path.join("runs", FLAGS.task),
        backbone=BackboneConfig(FLAGS.backbone, FLAGS.sync_bn),
        adversarial=FLAGS.adversarial,
        jigsaw_permutations=FLAGS.jigsaw_permutations,
        jigsaw_identity_prob=FLAGS.jigsaw_identity_prob,
        selfie_layers=FLAGS.selfie_layers,
        selfie_heads=FLAGS.selfie_heads,
        selfie_ff_dim=FLAGS.selfie_ff_dim,
        selfie_dropout=FLAGS.selfie_dropout,
        selfie_logit_scale=FLAGS.selfie_logit_scale,
        diversity_weight=FLAGS.diversity_weight,
        contrastive=ContrastiveConfig(
            temperature=FLAGS.temperature,
            air=FLAGS.air,
            air_sir_weight=FLAGS.air_sir_weight,
            air_air_weight=FLAGS.air_air_weight,
            dynacl_period=FLAGS.dynacl_period,
            dynacl_swap_param=FLAGS.dynacl_swap_param,
            dynacl_encoder_momentum=FLAGS.dynacl_encoder_momentum,
        ),
        **common_flags.training_config_fields(),
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
