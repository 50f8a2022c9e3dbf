"""The reference code's PyTorch checkpoints → the SavedModels advss_tf's own binaries write (docs/import.md).

    python -m advss_tf.import_torch --checkpoint=model_best.pt --format=finetune --output=imported/ft

Each format is one of the reference's checkpoint layouts, and FORMATS is the one table of them (what `--format`
accepts and lists): its name, what it reads and writes, its converter (one module of this package per family) and
the options it takes. The file is read with `torch.load(weights_only=True)` — a checkpoint is a pickle, and a pickle
that needs more than tensors and plain containers could run code, so it is refused. Every tensor of the file is used:
copied into our model, checked (the normaliser's mean/std must be ours; RobustBench's second registration of its
branches must equal the first) or, for BatchNorm's `num_batches_tracked`, read and recorded; a missing, unexpected or
mis-shaped key is one UsageError naming it, before anything is written. The models are built with architecture
version 2 (the reference's block), and the export's assets record the source file (name, sha256), the format and
that the reference code trained it.

The formats `acl`, `dynacl`, `acl_air` and `dynacl_air` read the released pretraining checkpoints of ACL, DynACL and
AIR (importers/contrastive.py) into the contrastive pretraining export, both BatchNorm routes.

PyTorch is imported lazily (inside `checkpoint.load_checkpoint`): importing the importers works without it.
"""

from __future__ import annotations

import os

from advss_tf.errors import UsageError
from advss_tf.importers import classifier, contrastive, ensemble_pretraining, ensembles, pretext, selfie
from advss_tf.importers.base import Format, Imported

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "finetune",
            "finetune/main.py, main_trades.py, main_trades2.py: {'state_dict': normaliser + ResNet} → classifier",
            classifier.import_finetune,
        ),
        Format(
            "rotation",
            "pretraining/train_{adv,std}_rotation.py: {'state_dict': normaliser + ResNet(4)} → pretraining export",
            pretext.import_classification_pretext,
        ),
        Format(
            "jigsaw",
            "pretraining/train_{adv,std}_jigsaw.py: {'state_dict': normaliser + ResNet(31)} (+ --permutations) → "
            "pretraining export",
            pretext.import_classification_pretext,
            options=("permutations",),
        ),
        Format(
            "selfie",
            "pretraining/train_{adv,std}_selfie.py: {'P_state', 'selfie_state'} → pretraining export",
            selfie.import_selfie,
            options=("selfie_heads",),
        ),
        Format(
            "ensemble_pretrain",
            "pretraining/ensemble_pretrain.py: {'state_dict', 'selfie_state'} (+ --permutations) → ensemble "
            "pretraining export (its trunk has no stem BN/ReLU, as the reference's)",
            ensemble_pretraining.import_ensemble_pretrain,
            options=("permutations", "selfie_heads"),
        ),
        Format(
            "finetune_ensemble",
            "finetune/model_ensemble.py: SelfEnsembleModel_all's state_dict (branch1-3, normalize), or three finetune "
            "checkpoints (comma-separated) → one classifier: mean of the three softmaxes",
            ensembles.import_finetune_ensemble,
        ),
        Format(
            "robustbench",
            "RobustBench's Chen2020Adversarial (branch1-3, models.0-2, mu, sigma) → one classifier: mean of the three "
            "softmaxes",
            ensembles.import_robustbench,
        ),
        # ACL, DynACL and AIR save one network in one dict (importers/contrastive.py): four names for one layout, so
        # that the export records which method trained it.
        Format(
            "acl",
            "ACL train_simCLR.py (model.pt, model_<epoch>.pt, the released ACL_DS.pt): {'epoch', 'state_dict': "
            "multi-BN ResNet + proj_head, 'optim'} → contrastive pretraining export (task acl, both routes)",
            contrastive.import_contrastive,
        ),
        Format(
            "dynacl",
            "DynACL train_DynACL.py: model_encoder_k.pt (the released DynACL.pt; ACL's layout) or the momentum pair "
            "(model.pt: encoder_q. + encoder_k.; the key is imported) → contrastive pretraining export (task dynacl)",
            contrastive.import_contrastive,
        ),
        Format(
            "acl_air",
            "AIR pretraining.py without --DynAug (ACL's layout) → contrastive pretraining export (task acl, AIR)",
            contrastive.import_contrastive,
        ),
        Format(
            "dynacl_air",
            "AIR pretraining.py --DynAug (the released DynACL_IR.pt; ACL's layout) → contrastive pretraining export "
            "(task dynacl, AIR)",
            contrastive.import_contrastive,
        ),
    )
}


def check_output(output: str, overwrite: bool) -> None:
    """An output folder that holds anything is refused unless `overwrite` (then it is replaced once complete)."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {output} exists and is not a directory")
    if os.path.isdir(output) and os.listdir(output) and not overwrite:
        raise UsageError(f"--output {output} is not empty; pass --overwrite to replace it")


def load(
    checkpoints: str | list[str],
    fmt: str,
    *,
    permutations: str | None = None,
    selfie_heads: int | None = None,
) -> Imported:
    """The reference checkpoint(s) of format `fmt` as our Keras model(s), every tensor checked and placed.

    Args:
      checkpoints: the file (or, for finetune_ensemble, three finetune files).
      fmt: a FORMATS key.
      permutations: jigsaw and ensemble_pretrain only: the training script's permutation.npy.
      selfie_heads: selfie and ensemble_pretrain only: attention heads (default: trunk width / 64, as the
        reference's get_selfie_model).

    Raises:
      UsageError: anything wrong with the inputs.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; valid: {', '.join(FORMATS)}")
    paths = [checkpoints] if isinstance(checkpoints, str) else list(checkpoints)
    options = {"permutations": permutations, "selfie_heads": selfie_heads}
    for option, value in options.items():
        if value is not None and option not in FORMATS[fmt].options:
            takers = " or ".join(name for name, f in FORMATS.items() if option in f.options)
            raise UsageError(f"--{option} is for --format={takers}, not {fmt}")
    return FORMATS[fmt].convert(paths, FORMATS[fmt], options)


def import_checkpoint(
    checkpoints: str | list[str],
    fmt: str,
    output: str,
    *,
    permutations: str | None = None,
    selfie_heads: int | None = None,
    overwrite: bool = False,
) -> Imported:
    """Imports the reference checkpoint(s) as `fmt` into a SavedModel at `output` (see `load` and FORMATS).

    An occupied `output` is refused unless `overwrite`; on any UsageError nothing is written.
    """
    check_output(output, overwrite)
    imported = load(checkpoints, fmt, permutations=permutations, selfie_heads=selfie_heads)
    imported.write(output)
    return imported
