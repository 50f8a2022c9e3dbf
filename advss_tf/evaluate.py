"""How robust is a classifier? `python -m advss_tf.evaluate --model=<SavedModel> [--output_dir=<dir>] ...`.

Takes any classifier SavedModel whose signature maps float32 images [N, H, W, 3] in [0, 1] to [N, K] logits, H x W
and K the test data's (32x32 and 10 on CIFAR-10; docs/data.md) — ours, or a third party's such as a Keras
`model.export` — runs the clean test set, the chosen attacks (AutoAttack with --attacks=autoattack: L∞, or L2 with
--autoattack_norm=l2; its rand version for randomised models with --autoattack_version=rand) and optionally
CIFAR-10-C, and writes
<output_dir>/{results.json, report.md, per_example.npz, model_card.json, figures/, tensorboard/evaluate/} (default
output_dir: runs/<model name>_eval).
A stopped run continues where it stopped when the same command is run again. See docs/evaluate.md and `--helpfull`.
"""

from __future__ import annotations

import sys

from absl import flags

import advss_tf  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow is imported)
from advss_tf import common_flags
from advss_tf.attacks.registry import (
    ATTACKS,
    AUTOATTACK,
    AUTOATTACK_VERSIONS,
    COMPOSITES,
    DEFAULT_ATTACKS,
    MAX_L2_EPS,
)
from advss_tf.config import DEFAULT_SQUARE_QUERIES, DEFAULT_TARGETS, EVAL_STRATEGIES, NO_CIFAR10C
from advss_tf.corruptions.cifar10c import ALL_CORRUPTIONS, SEVERITIES
from advss_tf.corruptions.sources import CIFAR10C_SOURCES

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "model", None, "Classifier SavedModel: float32 images [N,H,W,3] in [0,1] -> [N,K] logits (the test data's H, W, K)."
)
flags.mark_flag_as_required("model")
flags.DEFINE_string(
    "output_dir",
    None,
    "Where results.json, report.md, per_example.npz, model_card.json, figures/ and tensorboard/evaluate/ go "
    "(default: runs/<model name>_eval). Partial results of a stopped run are continued from here.",
)
flags.DEFINE_string("model_name", None, "The model's label in reports and plots (default: its run or folder name).")
flags.DEFINE_bool("overwrite", False, "Replace the results already in --output_dir instead of refusing.")
flags.DEFINE_integer("seed", 0, "The one seed every attack's random start (and the CIFAR-10-C generator) derives from.")
common_flags.define_data_flags(train_split=False)
flags.DEFINE_list(
    "attacks",
    list(DEFAULT_ATTACKS),
    f"Attacks, comma-separated: {', '.join(ATTACKS)}; 'all'; 'none' (clean only); {', '.join(COMPOSITES)} (the "
    "standard AutoAttack: each attack on the examples the earlier ones left standing); or such a chain a+b+c.",
)
flags.DEFINE_integer(
    "targets", DEFAULT_TARGETS, "Target classes of the targeted attacks (APGD-T, FAB-T): 1 .. classes - 1."
)
flags.DEFINE_integer("square_queries", DEFAULT_SQUARE_QUERIES, "Square's query budget (>= 1).")
flags.DEFINE_enum(
    "strategy", "auto", EVAL_STRATEGIES, "auto: data-parallel (mirrored) over GPUs when there are, else one device."
)
flags.DEFINE_integer("num_cpu_devices", 1, "Split the CPU into this many logical devices (data parallel on CPU).")
flags.DEFINE_integer("restarts", 1, "Random restarts per attack; robust = survives every one (FGSM never restarts).")
common_flags.define_fraction(
    "linf_epsilon",
    "8/255",
    "L∞ radius of fgsm, pgd20, pgd100, cw_linf, apgd_*, fab_t and square on the [0,1] pixel scale.",
)
common_flags.define_fraction("linf_epsilon_large", "16/255", "L∞ radius of pgd20_eps16 on the [0,1] pixel scale.")
common_flags.define_fraction(
    "l2_epsilon", "0.5", "L2 radius of pgd_l2 and of the *_l2 AutoAttack components on the [0,1] pixel scale."
)
flags.DEFINE_enum(
    "autoattack_norm",
    "linf",
    tuple(AUTOATTACK),
    "The threat model --attacks=autoattack runs: linf (at --linf_epsilon) or l2 (at --l2_epsilon; results under "
    "autoattack_l2).",
)
flags.DEFINE_enum(
    "autoattack_version",
    "standard",
    tuple(AUTOATTACK_VERSIONS),
    "The AutoAttack version --attacks=autoattack runs: standard (APGD-CE, APGD-T, FAB-T, Square) or rand (for "
    "randomised models: APGD-CE and APGD-DLR with 20-sample EOT; results under autoattack_rand[_l2]).",
)
flags.DEFINE_integer("batch_size", 128, "Test images per attack call (independent of the model's training batch).")
flags.DEFINE_integer("max_examples", 0, "Evaluate only the first this many test images (0: all): for quick looks.")
flags.DEFINE_enum(
    "cifar10c_source",
    NO_CIFAR10C,
    (NO_CIFAR10C, *CIFAR10C_SOURCES),
    "CIFAR-10-C: built-in generator on the test images, an official .npy folder, a prepared TFDS, or none.",
)
flags.DEFINE_string("cifar10c_dir", None, "With --cifar10c_source=npy: the folder of <corruption>.npy and labels.npy.")
flags.DEFINE_list(
    "corruptions",
    ["headline"],
    f"CIFAR-10-C corruptions: headline (the 15), extra (the 4 held-out), all, or names ({', '.join(ALL_CORRUPTIONS)}).",
)
flags.DEFINE_list("severities", [str(s) for s in SEVERITIES], "CIFAR-10-C severities, any of 1..5.")
flags.DEFINE_bool("quiet", False, "No progress bars (log lines only).")
flags.register_validator("linf_epsilon", lambda v: 0 < v <= 1, "--linf_epsilon must be in (0, 1] on the [0,1] scale")
flags.register_validator(
    "linf_epsilon_large", lambda v: 0 < v <= 1, "--linf_epsilon_large must be in (0, 1] on the [0,1] scale"
)
flags.register_validator(
    "l2_epsilon", lambda v: 0 < v <= MAX_L2_EPS, f"--l2_epsilon must be in (0, {MAX_L2_EPS:.1f}] on the [0,1] scale"
)
flags.register_validator("batch_size", lambda v: v >= 1, "--batch_size must be >= 1")
flags.register_validator("max_examples", lambda v: v >= 0, "--max_examples must be >= 0 (0: all)")
flags.register_validator("restarts", lambda v: v >= 1, "--restarts must be >= 1")
flags.register_validator("num_cpu_devices", lambda v: v >= 1, "--num_cpu_devices must be >= 1")


def config_from_flags():
    from advss_tf.config import EvaluateConfig

    return EvaluateConfig(
        model=FLAGS.model,
        output_dir=FLAGS.output_dir,
        model_name=FLAGS.model_name,
        data=common_flags.data_source(),
        attacks=tuple(FLAGS.attacks),
        restarts=FLAGS.restarts,
        linf_epsilon=FLAGS.linf_epsilon,
        linf_epsilon_large=FLAGS.linf_epsilon_large,
        l2_epsilon=FLAGS.l2_epsilon,
        autoattack_norm=FLAGS.autoattack_norm,
        autoattack_version=FLAGS.autoattack_version,
        batch_size=FLAGS.batch_size,
        max_examples=FLAGS.max_examples,
        cifar10c_source=FLAGS.cifar10c_source,
        cifar10c_dir=FLAGS.cifar10c_dir,
        corruptions=tuple(FLAGS.corruptions),
        severities=tuple(FLAGS.severities),
        seed=FLAGS.seed,
        targets=FLAGS.targets,
        square_queries=FLAGS.square_queries,
        strategy=FLAGS.strategy,
        num_cpu_devices=FLAGS.num_cpu_devices,
        overwrite=FLAGS.overwrite,
        quiet=FLAGS.quiet,
    )


def main() -> None:
    from advss_tf.evaluation import evaluator

    evaluator.run(config_from_flags(), command=list(sys.argv))


def run() -> None:
    common_flags.run_binary(main)


if __name__ == "__main__":
    run()
