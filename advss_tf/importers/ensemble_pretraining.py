"""The reference's ensemble pretraining (pretraining/ensemble_pretrain.py: `{'state_dict', 'selfie_state'}`, one
trunk without stem BN/ReLU under rotation, jigsaw and selfie heads) → our ensemble pretraining export."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from advss_tf.errors import UsageError
from advss_tf.importers.backbone import infer_backbone, stage_slots
from advss_tf.importers.base import Format, Imported, pretrain_config, provenance
from advss_tf.importers.checkpoint import one_file, read_state_dicts
from advss_tf.importers.pretext import JIGSAW_HEAD_UNUSABLE, WithoutPermutations, permutation_record, read_permutations
from advss_tf.importers.selfie import selfie_dims, selfie_slots
from advss_tf.importers.slots import Slot, apply_slots, conv_slot, dense_slots
from advss_tf.patches import NUM_PATCHES
from advss_tf.tasks.ensemble import EnsembleTask
from advss_tf.training import pretraining


def import_ensemble_pretrain(paths: list[str], fmt: Format, options: dict[str, Any]) -> Imported:
    """An ensemble pretraining checkpoint (+ `options["permutations"]`, `options["selfie_heads"]`) → a pretraining
    export of task ensemble."""
    path = one_file(paths, fmt.name)
    (state, selfie_state), meta = read_state_dicts(path, fmt.name, ("state_dict", "selfie_state"))
    found = infer_backbone(state, "", path, "blocks.0.weight", ["blocks.1", "blocks.2", "blocks.3", "layer4_rotation"])
    backbone = dataclasses.replace(found, stem_norm=False)  # the reference ensemble's trunk: conv1 into layer1
    fc = state.get("fc_jigsaw.weight")
    perms = read_permutations(options.get("permutations"))
    classes = int(fc.shape[0]) if fc is not None else 31
    if perms is not None and classes != len(perms):
        raise UsageError(f"{path} has a {classes}-way jigsaw head but --permutations gives {len(perms)} classes")
    cfg = pretrain_config(
        backbone,
        "ensemble",
        jigsaw_permutations=max(classes - 1, 1),
        **selfie_dims(selfie_state, backbone, path, options),
    )
    task = EnsembleTask(cfg, perms if perms is not None else np.tile(np.arange(NUM_PATCHES), (classes, 1)))
    model = task.build_model()
    if perms is None:
        task = WithoutPermutations(task)
    apply_slots(state, ensemble_trunk_slots(model), f"{path} state_dict")
    apply_slots(selfie_state, selfie_slots(model.selfie), f"{path} selfie_state")
    extra = {"imported": provenance(paths, fmt, {}, {})}
    extra["imported"]["checkpoint_metadata"] = meta
    if perms is None:
        extra["jigsaw_head"] = JIGSAW_HEAD_UNUSABLE
    else:
        extra["imported"]["permutations"] = permutation_record(options["permutations"])
    return Imported(
        fmt.name, backbone, {"model": model}, extra, lambda out: pretraining.write_export(out, task, model, cfg, extra)
    )


def ensemble_trunk_slots(model) -> dict[str, Slot]:
    """`PretrainEnsembleModel`'s keys → our ensemble model (a trunk without stem BN/ReLU, two stage 4s + heads)."""
    cfg = model.backbone
    slots = {"blocks.0.weight": conv_slot(model.trunk.get_layer("stem_conv"))}
    for s in (1, 2, 3):
        slots.update(stage_slots(cfg, model.trunk, s, f"blocks.{s}"))
    for name in ("rotation", "jigsaw"):
        head = getattr(model, name)
        slots.update(stage_slots(cfg, head.stage4, 4, f"layer4_{name}"))
        slots.update(dense_slots(f"fc_{name}", head.head))
    return slots
