"""Importing PyTorch checkpoints of the reference code, RobustBench, and ACL / DynACL / AIR: `python -m
advss_tf.import_torch --checkpoint=FILE --format=FORMAT --output=DIR`.

Writes the SavedModel our own binaries write for that kind of model — a classifier export (`serving_default`,
`serving_uint8`) that `evaluate` attacks, or a pretraining export that `finetune --pretrained` restores — with
assets recording the source file, its sha256, the format and whose code trained it (docs/import.md).
Needs torch (`pip install -e ".[peer]"`); files are read with torch.load(weights_only=True). Bad input: one line on
stderr, exit status 2, nothing written.
"""

from __future__ import annotations

from absl import flags

from advss_tf import common_flags
from advss_tf.importers.formats import FORMATS

flags.DEFINE_list(
    "checkpoint",
    None,
    "The reference checkpoint file (for --format=finetune_ensemble: one file, or three finetune files, comma-separated).",
)
flags.DEFINE_enum(
    "format",
    None,
    list(FORMATS),
    "Which script wrote it: " + "; ".join(f"{k}: {v.description}" for k, v in FORMATS.items()),
)
flags.DEFINE_string("output", None, "The export directory to write (refused if it holds anything, unless --overwrite).")
flags.DEFINE_string(
    "permutations",
    None,
    "--format=jigsaw or ensemble_pretrain: the permutation.npy the training script saved (its 30 permutations).",
)
flags.DEFINE_integer(
    "selfie_heads",
    None,
    "--format=selfie or ensemble_pretrain: attention heads; default trunk width / 64, as the reference.",
    lower_bound=1,
)
flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output.")
flags.mark_flags_as_required(["checkpoint", "format", "output"])
FLAGS = flags.FLAGS


def main() -> None:
    from advss_tf.importers import formats

    result = formats.import_checkpoint(
        FLAGS.checkpoint,
        FLAGS.format,
        FLAGS.output,
        permutations=FLAGS.permutations,
        selfie_heads=FLAGS.selfie_heads,
        overwrite=FLAGS.overwrite,
    )
    print(f"imported {', '.join(FLAGS.checkpoint)} ({result.format}, {result.backbone.name}) → {FLAGS.output}")


def run() -> None:
    common_flags.run_binary(main)


if __name__ == "__main__":
    run()
