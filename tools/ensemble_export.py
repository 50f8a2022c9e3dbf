"""Combines several classifier exports into one ensemble SavedModel (the paper's best model, SPEC §8).

    python tools/ensemble_export.py \\
        --members=runs/selfie_ft/export/best_ra,runs/rotation_ft/export/best_ra,runs/jigsaw_ft/export/best_ra \\
        --output=runs/ensemble/export/ensemble

The export has the classifier interface (`serving_default` float32 images in [0, 1] → logits, probabilities;
`serving_uint8`). Its probabilities are the mean of the members' softmax outputs and its logits are
log(mean softmax): cross-entropy on them is the loss of the averaged prediction, so an attack through the export
attacks the average (the reference's SelfEnsembleModel_all), never a single member. Exit status 2 with one line
on bad input (a missing member, a SavedModel that is not images → logits, members with different class counts).
"""

from __future__ import annotations

from absl import flags

import advss_tf  # noqa: F401  (TF_ENABLE_ONEDNN_OPTS before TensorFlow)
from advss_tf import common_flags

flags.DEFINE_list("members", None, "Comma-separated classifier SavedModel directories (at least two).")
flags.DEFINE_string("output", None, "Directory of the ensemble SavedModel (written atomically).")
flags.mark_flag_as_required("members")
flags.mark_flag_as_required("output")
FLAGS = flags.FLAGS


def main() -> None:
    from advss_tf import serving

    info = serving.save_ensemble(FLAGS.members, FLAGS.output)
    print(f"ensemble of {len(info['ensemble'])} classifiers (mean of softmax) written to {FLAGS.output}")


if __name__ == "__main__":
    common_flags.run_binary(main)
