"""ACL's, DynACL's and AIR's pretraining checkpoints (their multi-BatchNorm ResNet + projection head, both routes) →
the contrastive pretraining export our `--task=acl` / `--task=dynacl` runs write (tasks/contrastive.py: parts trunk,
stage4, projection; `features` through the adversarial route, `features_clean` through the clean one).

The three codes train one network (ACL `models/resnet_multi_bn.py`; DynACL's and AIR's are copies of that file) and
save it in one dict, so one reading serves the four formats; the format names the method, which the export records
as its task and `trained_by`:

- ACL `train_simCLR.py:175-195`: `{'epoch', 'state_dict', 'optim'}` every epoch (`model.pt`), plus `'acc', 'tacc'`
  every 100 (`model_<epoch>.pt`); the released `ACL_DS.pt` is one of them.
- AIR `pretraining.py:294-305`: `{'epoch', 'state_dict', 'optim'}`; ACL-AIR without `--DynAug`, DynACL-AIR with it
  (the released `DynACL_IR.pt`). Only its ResNet-50 is wrapped in DataParallel (`:201-202`), so a ResNet-18 file has
  no `module.` prefix (the shared reader would drop one).
- DynACL `train_DynACL.py:229-264`: `model_encoder_k.pt` = `{'epoch', 'state_dict': encoder_k}`, the key encoder
  alone, which is what it releases and fine-tunes from (`assign_label.py:22`, `:40-44` load it strictly into one
  network); `model.pt` and `model_<epoch>.pt` hold the pair, `encoder_q.` + `encoder_k.` (+ `'optim'`, `'acc'`,
  `'tacc'`, `'rtacc'`), and so does `model_encoder_k_<epoch>.pt` (`:263` saves `model.state_dict()`). From a pair
  the key is imported — as our own dynacl export serves it — and the query's tensors are shape-checked, not imported.

Their state-dict keys, as `peer/torch_acl_resnet.py` reproduces them: `normalize.mean/std` (ImageNet statistics:
checked against ours), `conv1.weight`, `bn1.bn_list.<i>.…`, `layer<s>.<b>.conv1|bn1|conv2|bn2…`,
`layer<s>.<b>.downsample.conv|bn…`, `fc.fc1.weight/bias`, `fc.fc2.weight`, `fc.fc3.weight`, `fc.bn1-3.bn_list.<i>.…`,
where `bn_list.0` is ACL's bn_name 'normal' (our route clean) and `bn_list.1` 'pgd' (adversarial): the order of
`bn_names=['normal', 'pgd']` (ACL `train_simCLR.py:63`, `resnet_multi_bn.py:153-166`). BatchNorm's
`num_batches_tracked` has no weight of ours; the stem's, per route, is recorded (how many batches each route's
statistics saw).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from advss_tf.config import ContrastiveConfig
from advss_tf.errors import UsageError
from advss_tf.importers.base import Format, Imported, pretrain_config, provenance
from advss_tf.importers.checkpoint import one_file, read_state_dicts
from advss_tf.importers.slots import Slot, apply_slots, bn_slots, conv_slot, dense_slots, normaliser_slots
from advss_tf.models.backbones import BACKBONES, BackboneConfig
from advss_tf.models.contrastive import build_contrastive_model
from advss_tf.models.post_resnet import DualBatchNormalization, DualBNResNet, acl_module_names
from advss_tf.tasks.table import build_task
from advss_tf.training import pretraining

# Their released files are all ACL's post-activation ResNet (models/backbones.py's family of that name).
POST_FAMILY = "post_resnet"


@dataclasses.dataclass(frozen=True)
class Method:
    """Who wrote a file of this layout: the task and AIR setting our export records, and the code that trained it."""

    task: str
    air: bool
    trained_by: str


METHODS: dict[str, Method] = {
    "acl": Method("acl", False, "ACL (Jiang et al., NeurIPS 2020): VITA-Group/Adversarial-Contrastive-Learning"),
    "dynacl": Method("dynacl", False, "DynACL (Luo et al., ICLR 2023): PKU-ML/DYNACL"),
    "acl_air": Method("acl", True, "ACL-AIR (Xu et al., NeurIPS 2023): GodXuxilie/Enhancing_ACL_via_AIR"),
    "dynacl_air": Method("dynacl", True, "DynACL-AIR (Xu et al., NeurIPS 2023): GodXuxilie/Enhancing_ACL_via_AIR"),
}
# The entries their dicts hold besides 'state_dict': numbers recorded, the optimizer's state left.
NUMBERS = ("epoch", "acc", "tacc", "rtacc")
TRAINING_STATE = ("optim",)
# DynACL's momentum pair (`resnet18_momentum`): the key is what DynACL releases and fine-tunes from.
KEY, QUERY = "encoder_k.", "encoder_q."


def import_contrastive(paths: list[str], fmt: Format, options: dict[str, Any]) -> Imported:
    """An ACL / DynACL / AIR pretraining checkpoint (`fmt.name` a key of METHODS) → a contrastive pretraining
    export with both BatchNorm routes."""
    method = METHODS[fmt.name]
    path = one_file(paths, fmt.name)
    (state,), meta = read_state_dicts(path, fmt.name, ("state_dict",), NUMBERS, TRAINING_STATE)
    pair = any(k.startswith((KEY, QUERY)) for k in state)
    if pair and fmt.name != "dynacl":
        raise UsageError(f"{path} holds DynACL's momentum pair (encoder_q., encoder_k.): --format=dynacl")
    prefix = KEY if pair else ""
    backbone = infer_post_backbone(state, prefix, path)
    cfg = pretrain_config(backbone, method.task, contrastive=ContrastiveConfig(air=method.air))
    task = build_task(cfg)
    network = build_contrastive_model(backbone)  # the one network the export serves (DynACL's key)
    normaliser: dict = {}
    updates: dict = {}
    slots = network_slots(network, prefix, normaliser, updates)
    if pair:
        # The query's tensors: the key's names and shapes, each checked (its normaliser against ours), none placed.
        normalize = (f"{KEY}normalize.mean", f"{KEY}normalize.std")
        slots.update(
            {QUERY + k[len(KEY) :]: Slot(s.shape, s.put if k in normalize else _checked_only) for k, s in slots.items()}
        )
    apply_slots(state, slots, path)
    imported = provenance(paths, fmt, meta, normaliser, method.trained_by)
    imported["batchnorm_updates"] = updates
    if pair:
        imported["encoder_q"] = "DynACL's query encoder: its tensors checked, not imported (the key is the encoder)"
    extra = {"imported": imported}
    return Imported(
        fmt.name,
        backbone,
        {"model": network},
        extra,
        lambda out: pretraining.write_export(out, task, network, cfg, extra),
    )


def _checked_only(value: np.ndarray) -> None:
    del value  # its key and shape were checked by apply_slots


def infer_post_backbone(state: dict[str, np.ndarray], prefix: str, where: str) -> BackboneConfig:
    """The post-activation backbone (`resnet18_post`, `tiny_post`) with the stem width, block counts and stage widths
    of `state`'s ResNet (keys under `prefix`)."""
    stem = state.get(f"{prefix}conv1.weight")
    if stem is None:
        raise UsageError(f"{where}: 1 missing: {prefix}conv1.weight (no ResNet stem)")
    blocks, widths = [], []
    for s in (1, 2, 3, 4):
        layer = f"{prefix}layer{s}."
        blocks.append(len({k[len(layer) :].split(".")[0] for k in state if k.startswith(layer)}))
        first = state.get(f"{layer}0.conv1.weight")
        widths.append(int(first.shape[0]) if first is not None else 0)
    for name, spec in BACKBONES.items():
        if spec.family == POST_FAMILY and (spec.stem, spec.blocks, spec.planes) == (
            stem.shape[0],
            tuple(blocks),
            tuple(widths),
        ):
            return BackboneConfig(name)
    known = ", ".join(
        f"{n} (stem {s.stem}, blocks {list(s.blocks)}, widths {list(s.planes)})"
        for n, s in BACKBONES.items()
        if s.family == POST_FAMILY
    )
    raise UsageError(
        f"{where}: a ResNet with stem {stem.shape[0]}, blocks {blocks}, widths {widths} is none of advss_tf's "
        f"post-activation backbones: {known}"
    )


def dual_bn_slots(prefix: str, layer: DualBatchNormalization) -> dict[str, Slot]:
    """ACL's `batch_norm_multiple` under `prefix` (`bn_list.<i>`) → our routes, in the same order."""
    slots: dict[str, Slot] = {}
    for i, norm in enumerate(layer.norms):
        slots.update(bn_slots(f"{prefix}.bn_list.{i}", norm))
    return slots


def network_slots(network: DualBNResNet, prefix: str, normaliser: dict, updates: dict) -> dict[str, Slot]:
    """ACL's `resnet18` with `fc = proj_head` (keys under `prefix`) → our DualBNResNet's variables; the normaliser
    is checked into `normaliser`, the stem BatchNorms' `num_batches_tracked` recorded into `updates` by route."""
    slots = normaliser_slots(f"{prefix}normalize.mean", f"{prefix}normalize.std", (3,), normaliser)
    for name, layer in acl_module_names(network):
        if isinstance(layer, DualBatchNormalization):
            slots.update(dual_bn_slots(f"{prefix}{name}", layer))
        elif isinstance(layer, keras.layers.Dense):
            slots.update(dense_slots(f"{prefix}{name}", layer))
        else:
            slots[f"{prefix}{name}.weight"] = conv_slot(layer)
    stem_bn = next(layer for layer in network.trunk.parts if layer.name == "stem_bn")
    for i, route in enumerate(stem_bn.routes):
        slots[f"{prefix}bn1.bn_list.{i}.num_batches_tracked"] = Slot((), lambda v, r=route: updates.update({r: int(v)}))
    return slots
