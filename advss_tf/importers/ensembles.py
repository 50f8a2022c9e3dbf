"""Ensembles of three fine-tuned classifiers → one classifier export (logits = log of the mean softmax): the
reference's finetune/model_ensemble.py (`SelfEnsembleModel_all`'s state_dict, or its three finetune checkpoints) and
RobustBench's Chen2020Adversarial (the same ensemble, its branches registered twice, `mu`/`sigma`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from advss_tf import serving
from advss_tf.config import to_dict, versions
from advss_tf.errors import UsageError
from advss_tf.importers.backbone import infer_backbone, resnet_slots
from advss_tf.importers.base import Format, Imported, provenance
from advss_tf.importers.checkpoint import read_state_dicts
from advss_tf.importers.classifier import classifier_from
from advss_tf.importers.slots import Slot, apply_slots, normaliser_slots, sub_state
from advss_tf.models.classifier import ImageClassifier

_BRANCHES = ("branch1.", "branch2.", "branch3.")


def import_finetune_ensemble(paths: list[str], fmt: Format, options: dict[str, Any]) -> Imported:
    """model_ensemble.py's state_dict (branch1-3, normalize), or three finetune checkpoints → one classifier."""
    normaliser: dict = {}
    meta: dict = {}
    if len(paths) == 3:
        branches = []
        for path in paths:
            (state,), meta_i = read_state_dicts(path, "finetune", ("state_dict",))
            branches.append(classifier_from(state, path, normaliser))
            meta[os.path.basename(path)] = meta_i
    elif len(paths) == 1:
        path = paths[0]
        (state,), meta = read_state_dicts(path, fmt.name, ("state_dict",))
        checks = normaliser_slots("normalize.mean", "normalize.std", (3,), normaliser)
        branches = _branches_of(state, path, checks)
    else:
        raise UsageError(f"--format={fmt.name} takes one file or three")
    return _ensemble_import(paths, fmt, branches, meta, normaliser)


def import_robustbench(paths: list[str], fmt: Format, options: dict[str, Any]) -> Imported:
    """RobustBench's Chen2020Adversarial (branch1-3, models.0-2, mu, sigma) → one classifier."""
    if len(paths) != 1:
        raise UsageError(f"--format={fmt.name} takes one file")
    path = paths[0]
    normaliser: dict = {}
    (state,), meta = read_state_dicts(path, fmt.name, ("state_dict",))
    # The class registers its branches twice (branchN. and models.N-1.): the copies must be the same tensors.
    for i in (1, 2, 3):
        for key in [k for k in state if k.startswith(f"models.{i - 1}.")]:
            twin = f"branch{i}." + key[len(f"models.{i - 1}.") :]
            if twin not in state or not np.array_equal(state[twin], state[key]):
                raise UsageError(f"{path}: {key} is not the same tensor as {twin}")
    branches = _branches_of(state, path, normaliser_slots("mu", "sigma", (1, 3, 1, 1), normaliser))
    return _ensemble_import(paths, fmt, branches, meta, normaliser)


def _branches_of(state: dict[str, np.ndarray], path: str, checks: dict[str, Slot]) -> list[ImageClassifier]:
    """The three `branch<i>.<ResNet>` of one ensemble file as our classifiers; its other tensors (bar RobustBench's
    `models.` copies, checked before) go to `checks`."""
    branches = []
    for i, prefix in enumerate(_BRANCHES, start=1):
        sub = sub_state(state, prefix)
        backbone = infer_backbone(sub, "", f"{path} branch{i}")
        linear = sub.get("linear.weight")
        model = ImageClassifier(
            backbone, int(linear.shape[0]) if linear is not None else 10, name=f"classifier_branch{i}"
        )
        apply_slots(sub, resnet_slots(model), f"{path} branch{i}")
        branches.append(model)
    rest = {k: v for k, v in state.items() if not k.startswith((*_BRANCHES, "models."))}
    apply_slots(rest, checks, path)
    return branches


def _ensemble_import(
    paths: list[str], fmt: Format, branches: list[ImageClassifier], meta: dict, normaliser: dict
) -> Imported:
    """The three branches as one classifier export: probabilities = their mean softmax, logits = its log."""
    if len({m.backbone for m in branches}) != 1 or len({m.num_classes for m in branches}) != 1:
        raise UsageError("the three branches differ in backbone or classes")
    info = {
        "version": 1,
        "ensemble": [{"branch": f"branch{i + 1}", "format": "imported"} for i in range(3)],
        "combination": "probabilities = mean of the members' softmax; logits = log(probabilities)",
        "num_classes": branches[0].num_classes,
        "backbone": to_dict(branches[0].backbone),
        "pretrained": None,
        "imported": provenance(paths, fmt, meta, normaliser),
        "versions": versions(),
    }

    def logits(images):
        return serving.log_mean_softmax([m(images, training=False) for m in branches])

    parts = {f"branch{i + 1}": {"trunk": m.trunk, "stage4": m.stage4, "head": m.head} for i, m in enumerate(branches)}
    models = {f"branch{i + 1}": m for i, m in enumerate(branches)}
    return Imported(
        fmt.name, branches[0].backbone, models, info, lambda out: serving.save_classifier(out, logits, parts, info)
    )
