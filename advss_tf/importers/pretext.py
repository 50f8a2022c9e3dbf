"""The reference's classification pretext models (pretraining/train_{adv,std}_{rotation,jigsaw}.py: `{'state_dict':
normaliser + ResNet(4 or 31)}`) → our pretraining export; the jigsaw permutation set (permutation.npy) they and the
ensemble pretraining share."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from advss_tf.errors import UsageError
from advss_tf.importers.backbone import infer_backbone, resnet_slots
from advss_tf.importers.base import Format, Imported, pretrain_config, provenance
from advss_tf.importers.checkpoint import one_file, read_state_dicts, sha256
from advss_tf.importers.slots import apply_slots, normaliser_slots
from advss_tf.patches import NUM_PATCHES
from advss_tf.tasks.classification import jigsaw_task, rotation_task
from advss_tf.training import pretraining

# The export's `jigsaw_head` when the file's permutation set was not given.
JIGSAW_HEAD_UNUSABLE = "unusable: the permutation set (the script's permutation.npy) was not given"


def import_classification_pretext(paths: list[str], fmt: Format, options: dict[str, Any]) -> Imported:
    """A rotation or jigsaw checkpoint (`fmt.name`; jigsaw with `options["permutations"]`) → a pretraining export."""
    path = one_file(paths, fmt.name)
    (state,), meta = read_state_dicts(path, fmt.name, ("state_dict",))
    backbone = infer_backbone(state, "1.", path)
    perms = read_permutations(options.get("permutations")) if fmt.name == "jigsaw" else None
    linear = state.get("1.linear.weight")
    classes = int(linear.shape[0]) if linear is not None else None
    if fmt.name == "rotation":
        cfg = pretrain_config(backbone, "rotation")
        task = rotation_task(cfg)
    else:
        n_random = (len(perms) - 1) if perms is not None else max((classes or 31) - 1, 1)
        cfg = pretrain_config(backbone, "jigsaw", jigsaw_permutations=n_random)
        if perms is not None and classes is not None and classes != len(perms):
            raise UsageError(
                f"{path} has a {classes}-way jigsaw head but --permutations holds {len(perms) - 1} permutations "
                f"(+ the identity = {len(perms)} classes)"
            )
        task = jigsaw_task(cfg, perms if perms is not None else np.tile(np.arange(NUM_PATCHES), (n_random + 1, 1)))
    model = task.build_model()
    normaliser: dict = {}
    apply_slots(state, {**normaliser_slots("0.mean", "0.std", (3,), normaliser), **resnet_slots(model, "1.")}, path)
    extra = {"imported": provenance(paths, fmt, meta, normaliser)}
    if fmt.name == "jigsaw" and perms is None:
        task = WithoutPermutations(task)  # no permutation set to export: the head's classes mean nothing known
        extra["jigsaw_head"] = JIGSAW_HEAD_UNUSABLE
    elif fmt.name == "jigsaw":
        extra["imported"]["permutations"] = permutation_record(options["permutations"])
    return Imported(
        fmt.name, backbone, {"model": model}, extra, lambda out: pretraining.write_export(out, task, model, cfg, extra)
    )


def read_permutations(path: str | None) -> np.ndarray | None:
    """permutation.npy ([N, 16], 0- or 1-based, as the reference scripts save and fix it) → [identity; rows]."""
    if path is None:
        return None
    if not os.path.isfile(path):
        raise UsageError(f"--permutations {path} is not a file")
    try:
        perms = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UsageError(f"--permutations {path} is not a NumPy .npy array ({str(e)[:100]})") from e
    if perms.ndim != 2 or perms.shape[1] != NUM_PATCHES or not np.issubdtype(perms.dtype, np.integer):
        raise UsageError(
            f"--permutations {path}: expected integers [N, {NUM_PATCHES}], got {perms.dtype} {perms.shape}"
        )
    if perms.min() == 1:  # ensemble_pretrain.py's own fix for 1-based sets
        perms = perms - 1
    if any(sorted(row) != list(range(NUM_PATCHES)) for row in perms.tolist()):
        raise UsageError(f"--permutations {path}: every row must be a permutation of 0..{NUM_PATCHES - 1}")
    return np.concatenate([np.arange(NUM_PATCHES)[None], perms]).astype(np.int32)


def permutation_record(path: str) -> dict[str, str]:
    """The export's record of the permutation file it was given."""
    return {
        "file": os.path.basename(path),
        "sha256": sha256(path),
        "classes": "class 0 = identity, class k = row k-1 of the file (as the reference's jigsaw())",
    }


class WithoutPermutations:
    """A jigsaw-carrying task as the export sees it when the permutation set is unknown: no permutation asset."""

    def __init__(self, task):
        self._task = task

    def __getattr__(self, name: str):
        return getattr(self._task, name)

    def export_assets(self) -> dict[str, str]:
        return {}
