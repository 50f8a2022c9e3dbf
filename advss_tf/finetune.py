"""Fine-tuning a pretrained backbone into a classifier of the data's classes: `python -m advss_tf.finetune --pretrained=... ...`.

    python -m advss_tf.finetune --flagfile=flags/paper/finetune_full_adversarial.flags \\
        --pretrained=runs/rotation/export/pretrain --model_dir=runs/rotation_ft

Without --pretrained: the end-to-end adversarial-training baseline from random init. The backbone is read from the
export (give --backbone only to assert it). Writes <model_dir>/{config.json, checkpoints/, tensorboard/,
export/{best_ra,best_sa,last}/, results.json}; re-running the same command resumes. See docs/finetune.md.
"""

from __future__ import annotations

import os

from absl import flags

import advss_tf  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow is imported)
from advss_tf import common_flags
from advss_tf.config import FINETUNE_MODES, FINETUNE_OBJECTIVES, HEAD_INITS, PSEUDO_LABELS

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "pretrained", None, "Pretraining export to start from (<pretrain model_dir>/export/pretrain); none: random init."
)
flags.DEFINE_string(
    "pretrained_route",
    None,
    "An export with two BatchNorm routes (acl, dynacl): which one the classifier starts from, clean or adversarial "
    "(default: adversarial, as ACL fine-tunes); refused for an export with one.",
)
common_flags.define_model_flags(None, "Backbone; default: the export's (resnet18 without --pretrained).")
flags.DEFINE_enum(
    "mode", "full", FINETUNE_MODES, "What trains: linear = Dense only, partial = stage 4 + Dense, full = all."
)
flags.DEFINE_enum(
    "objective",
    "adversarial",
    FINETUNE_OBJECTIVES,
    "standard = clean CE; adversarial = CE on PGD examples only; trades.",
)
flags.DEFINE_float("trades_beta", 6.0, "TRADES: weight β of KL(p_clean || p_adv).")
flags.DEFINE_float(
    "aux_rotation_weight", 0.0, "> 0: rotation auxiliary head with this loss weight (Hendrycks et al. 2019: 0.5)."
)
flags.DEFINE_enum(
    "head_init",
    "glorot_uniform",
    HEAD_INITS,
    "Initial weights of the new Dense head: Keras' glorot_uniform (bias 0), or zeros (the RobustSSL benchmark).",
)
flags.DEFINE_bool(
    "restore_head",
    False,
    "Also restore --pretrained's `head` (it must have this run's class count): DynACL++'s adversarial fine-tuning "
    "continues its linear probe.",
)
flags.DEFINE_enum(
    "pseudo_labels",
    "none",
    PSEUDO_LABELS,
    "Train on pseudo-labels instead of the labels (DynACL++): kmeans = k-means cluster ids of --pretrained's "
    "clean-route features of the training images; pretrained = the ones --pretrained was trained on (an export "
    "of an earlier pseudo-label run). Such a run also writes export/pretrain.",
)
flags.DEFINE_integer("kmeans_clusters", 10, "--pseudo_labels=kmeans: the number of clusters (= classes).")
flags.register_validator("kmeans_clusters", lambda v: v >= 2, "--kmeans_clusters must be >= 2")
common_flags.define_length_flags()
flags.DEFINE_integer("val_attack_steps", 20, "PGD iterations of the per-epoch validation robust accuracy.")
flags.DEFINE_integer("val_examples", 0, "Validate on the first this many held-out images (0: the whole split).")
flags.DEFINE_integer("val_batch_size", 128, "Batch size of the validation pass.")
flags.register_validator("trades_beta", lambda v: v >= 0, "--trades_beta must be >= 0")
flags.register_validator("aux_rotation_weight", lambda v: v >= 0, "--aux_rotation_weight must be >= 0")
flags.register_validator("val_batch_size", lambda v: v >= 1, "--val_batch_size must be >= 1")
flags.register_validator("val_attack_steps", lambda v: v >= 1, "--val_attack_steps must be >= 1")
flags.register_validator("val_examples", lambda v: v >= 0, "--val_examples must be >= 0")

common_flags.define_run_flags()
common_flags.define_data_flags()
common_flags.define_attack_flags(steps_default=10)
# The reference recipe (finetune/main.py): SGD 0.9, lr 0.1, coupled L2 3e-4, ×0.1 at epochs 60 and 80, epoch-0
# warm-up 0.01 → 0.1 over 200 steps.
common_flags.define_optimizer_flags(lr=0.1, momentum=0.9, wd=3e-4, schedule="step", warmup_steps=200)
FLAGS.set_default("lr_boundaries", ["60", "80"])
common_flags.define_runtime_flags()


def default_model_dir(pretrained: str | None, aux_rotation_weight: float) -> str:
    """runs/<pretraining run>_ft for <run>/export/pretrain (WORKSPACE.md's naming); without an export the baselines'
    runs/end_to_end or runs/rotation_aux."""
    if not pretrained:
        return os.path.join("runs", "rotation_aux" if aux_rotation_weight else "end_to_end")
    parts = os.path.normpath(os.path.abspath(pretrained)).split(os.sep)
    name = parts[-3] if parts[-2:] == ["export", "pretrain"] and len(parts) > 3 else parts[-1]
    return os.path.join("runs", f"{name}_ft")


def config_from_flags():
    from advss_tf.config import FinetuneConfig
    from advss_tf.models.backbones import BackboneConfig

    return FinetuneConfig(
        model_dir=FLAGS.model_dir or default_model_dir(FLAGS.pretrained, FLAGS.aux_rotation_weight),
        pretrained=FLAGS.pretrained,
        pretrained_route=FLAGS.pretrained_route,
        backbone=BackboneConfig(FLAGS.backbone, FLAGS.sync_bn) if FLAGS.backbone else None,
        sync_bn=FLAGS.sync_bn,
        mode=FLAGS.mode,
        objective=FLAGS.objective,
        trades_beta=FLAGS.trades_beta,
        aux_rotation_weight=FLAGS.aux_rotation_weight,
        val_attack_steps=FLAGS.val_attack_steps,
        val_examples=FLAGS.val_examples,
        val_batch_size=FLAGS.val_batch_size,
        head_init=FLAGS.head_init,
        restore_head=FLAGS.restore_head,
        pseudo_labels=FLAGS.pseudo_labels,
        kmeans_clusters=FLAGS.kmeans_clusters,
        **common_flags.training_config_fields(),
    )


def main() -> None:
    from absl import logging

    from advss_tf.training import cluster, finetuning

    cfg = config_from_flags()
    common_flags.print_run_paths(cfg.model_dir, "best_ra")
    with cluster.lost_worker_errors(FLAGS.strategy == "multi_worker"):
        results = finetuning.run(cfg, overwrite=FLAGS.overwrite)
    best = results["best_robust_accuracy"] or {}
    logging.info("done: %d steps, exports in %s", results["steps"], results["exports"])
    print(
        f"fine-tuning done: {results['steps']} steps; best validation robust accuracy "
        f"{best.get('robust_accuracy', float('nan')):.4f} (clean {best.get('clean_accuracy', float('nan')):.4f}) "
        f"at epoch {best.get('epoch')}; SavedModels in {results['exports']['best_ra']} (and best_sa, last)"
    )


def run() -> None:
    common_flags.run_binary(main)


if __name__ == "__main__":
    run()
