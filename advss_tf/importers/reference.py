"""The reference code's PyTorch checkpoints → the SavedModels advss_tf's own binaries write (docs/import.md).

    python -m advss_tf.import_torch --checkpoint=model_best.pt --format=finetune --output=imported/ft

Each format is one of the reference's checkpoint layouts (FORMATS). The file is read with
`torch.load(weights_only=True)` — a checkpoint is a pickle, and a pickle that needs more than tensors and plain
containers could run code, so it is refused. Every tensor of the file is used: copied into our model, checked
(the normaliser's mean/std must be ours; RobustBench's second registration of its branches must equal the first) or,
for BatchNorm's `num_batches_tracked`, read and recorded; a missing, unexpected or mis-shaped key is one UsageError
naming it, before anything is written. The models are built with architecture version 2 (the reference's block),
and the export's assets record the source file (name, sha256), the format and that the reference code trained it.

PyTorch is imported lazily (inside `load_checkpoint`): `import advss_tf.importers.reference` works without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from advss_tf import serving
from advss_tf.config import PretrainConfig, to_dict, versions
from advss_tf.data import cifar10
from advss_tf.errors import UsageError
from advss_tf.models.backbones import BACKBONES, BackboneConfig
from advss_tf.models.classifier import ImageClassifier
from advss_tf.models.layers import MEAN, STD
from advss_tf.models.resnet import STAGE_STRIDES
from advss_tf.models.selfie import SelfieModel
from advss_tf.patches import GRID, NUM_PATCHES
from advss_tf.tasks.classification import jigsaw_task, rotation_task
from advss_tf.tasks.ensemble import EnsembleTask
from advss_tf.tasks.selfie import SelfieTask
from advss_tf.training import pretraining, validation

REFERENCE = "Adv-SS-Pretraining (Chen et al., CVPR 2020), the paper's PyTorch code"
FORMATS = {
    "finetune": "finetune/main.py, main_trades.py, main_trades2.py: {'state_dict': normaliser + ResNet} → classifier",
    "rotation": "pretraining/train_{adv,std}_rotation.py: {'state_dict': normaliser + ResNet(4)} → pretraining export",
    "jigsaw": "pretraining/train_{adv,std}_jigsaw.py: {'state_dict': normaliser + ResNet(31)} (+ --permutations) → "
    "pretraining export",
    "selfie": "pretraining/train_{adv,std}_selfie.py: {'P_state', 'selfie_state'} → pretraining export",
    "ensemble_pretrain": "pretraining/ensemble_pretrain.py: {'state_dict', 'selfie_state'} (+ --permutations) → "
    "ensemble pretraining export (its trunk has no stem BN/ReLU, as the reference's)",
    "finetune_ensemble": "finetune/model_ensemble.py: SelfEnsembleModel_all's state_dict (branch1-3, normalize), or "
    "three finetune checkpoints (comma-separated) → one classifier: mean of the three softmaxes",
    "robustbench": "RobustBench's Chen2020Adversarial (branch1-3, models.0-2, mu, sigma) → one classifier: mean of "
    "the three softmaxes",
}
# Entries of a training script's checkpoint dict besides the weights: recorded (numbers) or left (optimizer state).
METADATA_KEYS = ("epoch", "best_prec1", "best_ata", "optimizer")
_REFERENCE_D_K = 64  # get_selfie_model: d_in = 64, n_heads = d_model // 64
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")


# -- reading -----------------------------------------------------------------------------------------------------------
def load_checkpoint(path: str) -> Any:
    """torch.load(path, weights_only=True) with every refusal as one UsageError; tensors become float32/int NumPy."""
    if not os.path.isfile(path):
        raise UsageError(f"--checkpoint {path} is not a file")
    try:
        import torch
    except ImportError as e:
        raise UsageError("importing a PyTorch checkpoint needs torch: pip install -e '.[peer]'") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e) and "Unsupported" in str(e):
            raise UsageError(
                f"{path} needs full unpickling (it holds Python objects, not only tensors and containers), which can "
                "run code; refused — re-save its state_dict with torch.save({'state_dict': model.state_dict()}, ...)"
            ) from e
        raise UsageError(f"{path} is not a PyTorch checkpoint ({str(e).splitlines()[0][:120]})") from e
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
        raise UsageError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {str(e)[:120]})") from e
    return _to_numpy(obj, torch)


def _to_numpy(obj: Any, torch) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v, torch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(v, torch) for v in obj)
    return obj


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _without_module_prefix(state: dict) -> dict:
    """A model saved from inside nn.DataParallel has every key under `module.`: the model's own keys without it."""
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def _state_dicts(obj: Any, path: str, fmt: str, names: tuple[str, ...]) -> tuple[list[dict], dict]:
    """The checkpoint's state dicts under `names` (a bare state dict counts as the first) and its metadata."""
    if not isinstance(obj, dict):
        raise UsageError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict (--format={fmt})")
    obj = {k: _without_module_prefix(v) if isinstance(v, dict) else v for k, v in obj.items()}
    obj = _without_module_prefix(obj)
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        if len(names) > 1:
            raise UsageError(f"{path} is a bare state_dict; --format={fmt} expects the keys {', '.join(names)}")
        return [obj], {}
    unexpected = sorted(k for k in obj if k not in names and k not in METADATA_KEYS)
    missing = [n for n in names if n not in obj]
    if missing or unexpected:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unexpected {', '.join(map(str, unexpected))}"] if unexpected else []
        raise UsageError(f"{path} is not a --format={fmt} checkpoint: {'; '.join(parts)} (top-level keys)")
    dicts = []
    for n in names:
        if not isinstance(obj[n], dict) or not all(isinstance(v, np.ndarray) for v in obj[n].values()):
            raise UsageError(f"{path}: {n!r} is not a state_dict of tensors")
        dicts.append(obj[n])
    meta = {}
    for k in ("epoch", "best_prec1", "best_ata"):
        if k in obj:
            v = obj[k]
            meta[k] = float(np.asarray(v)) if isinstance(v, (np.ndarray, float, int)) else str(v)
    if "optimizer" in obj:
        meta["optimizer"] = "present in the file, not imported (training state)"
    return dicts, meta


# -- what each reference tensor is in our models -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Slot:
    """One tensor of the file: its expected (PyTorch) shape and where it goes (`put(value)`), or a check."""

    shape: tuple[int, ...]
    put: Callable[[np.ndarray], None]


def _conv_shape(kernel_shape) -> tuple[int, ...]:
    kh, kw, i, o = kernel_shape
    return (o, i, kh, kw)


def _assign(var, value: np.ndarray) -> None:
    var.assign(np.asarray(value, dtype=np.float32).reshape(tuple(var.shape)))


def _conv_slot(layer) -> Slot:
    return Slot(_conv_shape(layer.kernel.shape), lambda v: _assign(layer.kernel, np.transpose(v, (2, 3, 1, 0))))


def _bn_slots(prefix: str, layer) -> dict[str, Slot]:
    c = int(layer.gamma.shape[0])
    slots = {
        f"{prefix}.{suffix}": Slot((c,), lambda v, var=var: _assign(var, v))
        for suffix, var in zip(
            _BN_SUFFIXES, (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance), strict=True
        )
    }
    slots[f"{prefix}.num_batches_tracked"] = Slot((), lambda v: None)  # PyTorch's update counter: no weight of ours
    return slots


def _dense_slots(prefix: str, layer) -> dict[str, Slot]:
    d, k = layer.kernel.shape
    return {
        f"{prefix}.weight": Slot((int(k), int(d)), lambda v: _assign(layer.kernel, v.T)),
        f"{prefix}.bias": Slot((int(k),), lambda v: _assign(layer.bias, v)),
    }


def stage_slots(cfg: BackboneConfig, part, stage: int, theirs: str) -> dict[str, Slot]:
    """The reference's `layer<stage>` (its keys under `theirs`, e.g. `1.layer2` or `blocks.2`) → the blocks
    `stage<stage>_block<i>_*` of our Keras model `part` (the trunk for stages 1-3, a stage 4)."""
    spec = cfg.spec
    in_channels = spec.stem if stage == 1 else cfg.stage_channels(stage - 1)
    slots = {}
    for i in range(spec.blocks[stage - 1]):
        ours = f"stage{stage}_block{i + 1}"
        names = {"bn0": "pre_bn", "conv1": "conv1", "bn1": "bn2", "conv2": "conv2"}
        if spec.block == "bottleneck":
            names.update(bn2="bn3", conv3="conv3")
        stride = STAGE_STRIDES[stage - 1] if i == 0 else 1
        if stride != 1 or in_channels != cfg.stage_channels(stage):
            names.update({"shortcut.0": "shortcut", "shortcut.1": "shortcut_bn"})
        for t_name, k_name in names.items():
            layer = part.get_layer(f"{ours}_{k_name}")
            if "bn" in k_name:
                slots.update(_bn_slots(f"{theirs}.{i}.{t_name}", layer))
            else:
                slots[f"{theirs}.{i}.{t_name}.weight"] = _conv_slot(layer)
        in_channels = cfg.stage_channels(stage)
    return slots


def resnet_slots(model: ImageClassifier, prefix: str = "", stages: int = 4, head: bool = True) -> dict[str, Slot]:
    """`resnetv2.ResNet`'s state_dict keys (under `prefix`) → our classifier's variables (`stages=3`, no head: `P`)."""
    cfg = model.backbone
    slots = {f"{prefix}conv1.weight": _conv_slot(model.trunk.get_layer("stem_conv"))}
    slots.update(_bn_slots(f"{prefix}bn1", model.trunk.get_layer("stem_bn")))
    for s in range(1, stages + 1):
        slots.update(stage_slots(cfg, model.trunk if s <= 3 else model.stage4, s, f"{prefix}layer{s}"))
    if head:
        slots.update(_dense_slots(f"{prefix}linear", model.head))
    return slots


def ensemble_trunk_slots(model) -> dict[str, Slot]:
    """`PretrainEnsembleModel`'s keys → our ensemble model (a trunk without stem BN/ReLU, two stage 4s + heads)."""
    cfg = model.backbone
    slots = {"blocks.0.weight": _conv_slot(model.trunk.get_layer("stem_conv"))}
    for s in (1, 2, 3):
        slots.update(stage_slots(cfg, model.trunk, s, f"blocks.{s}"))
    for name in ("rotation", "jigsaw"):
        head = getattr(model, name)
        slots.update(stage_slots(cfg, head.stage4, 4, f"layer4_{name}"))
        slots.update(_dense_slots(f"fc_{name}", head.head))
    return slots


def selfie_slots(model: SelfieModel, prefix: str = "") -> dict[str, Slot]:
    """`attention_pooling.SelfieModel`'s state_dict keys → our SelfieHead's variables."""
    head = model.selfie_head
    d = head.model_dim
    slots = {
        f"{prefix}u0": Slot((1, 1, d), lambda v: _assign(head.u0, v)),
        f"{prefix}row_embeddings": Slot((GRID, d), lambda v: _assign(head.row_embeddings, v)),
        f"{prefix}column_embeddings": Slot((GRID, d), lambda v: _assign(head.column_embeddings, v)),
    }
    for i, layer in enumerate(head.encoder_layers):
        p = f"{prefix}at_pool.layer_stack.{i}"
        mha = layer.attention
        h, dk = mha.num_heads, mha.key_dim
        # PyTorch's w_qs output index is head * d_k + j (view(b, l, n_head, d_k)): Keras' kernel is [d, heads, d_k].
        for theirs, dense in (("w_qs", mha._query_dense), ("w_ks", mha._key_dense), ("w_vs", mha._value_dense)):
            slots[f"{p}.slf_attn.{theirs}.weight"] = Slot((h * dk, d), lambda v, k=dense.kernel: _assign(k, v.T))
            slots[f"{p}.slf_attn.{theirs}.bias"] = Slot((h * dk,), lambda v, b=dense.bias: _assign(b, v))
        out = mha._output_dense
        slots[f"{p}.slf_attn.fc.weight"] = Slot((d, h * dk), lambda v, k=out.kernel: _assign(k, v.T))
        slots[f"{p}.slf_attn.fc.bias"] = Slot((d,), lambda v, b=out.bias: _assign(b, v))
        for theirs, norm in (("slf_attn.layer_norm", layer.attention_norm), ("pos_ffn.layer_norm", layer.ff_norm)):
            slots[f"{p}.{theirs}.weight"] = Slot((d,), lambda v, g=norm.gamma: _assign(g, v))
            slots[f"{p}.{theirs}.bias"] = Slot((d,), lambda v, b=norm.beta: _assign(b, v))
        ff = layer.ff_dim
        slots[f"{p}.pos_ffn.w_1.weight"] = Slot((ff, d, 1), lambda v, k=layer.ff_in.kernel: _assign(k, v[:, :, 0].T))
        slots[f"{p}.pos_ffn.w_1.bias"] = Slot((ff,), lambda v, b=layer.ff_in.bias: _assign(b, v))
        slots[f"{p}.pos_ffn.w_2.weight"] = Slot((d, ff, 1), lambda v, k=layer.ff_out.kernel: _assign(k, v[:, :, 0].T))
        slots[f"{p}.pos_ffn.w_2.bias"] = Slot((d,), lambda v, b=layer.ff_out.bias: _assign(b, v))
    return slots


def normaliser_slots(mean_key: str, std_key: str, shape: tuple[int, ...], record: dict) -> dict[str, Slot]:
    """The reference's normaliser buffers: checked against our models' (ImageNet) constants and recorded."""

    def check(name: str, ours: tuple[float, ...]):
        def put(value: np.ndarray) -> None:
            theirs = np.asarray(value, np.float32).reshape(-1)
            if not np.array_equal(theirs, np.asarray(ours, np.float32)):
                raise UsageError(
                    f"the file's normaliser {name} is {theirs.tolist()} but advss_tf's models normalise with "
                    f"{list(ours)} (ImageNet statistics, as the reference scripts): not imported"
                )
            record[name] = theirs.tolist()

        return put

    return {mean_key: Slot(shape, check("mean", MEAN)), std_key: Slot(shape, check("std", STD))}


def apply_slots(state: dict[str, np.ndarray], slots: dict[str, Slot], where: str) -> None:
    """Checks the keys and shapes of `state` against `slots` (one UsageError naming the first offenders), then puts
    every tensor in its place."""
    missing = [k for k in slots if k not in state]
    unexpected = [k for k in state if k not in slots]
    misshaped = [
        f"{k} {tuple(state[k].shape)} (expected {slots[k].shape})"
        for k in slots
        if k in state and tuple(state[k].shape) != slots[k].shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise UsageError(f"{where}: {'; '.join(problems)}")
    for key, slot in slots.items():
        slot.put(state[key])


# -- which of our backbones a file holds -------------------------------------------------------------------------------
def infer_backbone(
    state: dict[str, np.ndarray], prefix: str, where: str, stem_key: str | None = None, layers: list[str] | None = None
) -> BackboneConfig:
    """The backbone (architecture version 2) whose reference ResNet has the stem and block shapes of `state`.

    Keys: `<prefix>conv1.weight` and `<prefix>layer<s>.<i>.…` (the ResNet's own), or `stem_key` and the four
    `layers` prefixes (the ensemble's `blocks.0.weight`, `blocks.1` … `layer4_rotation`).
    """
    stem_key = stem_key or f"{prefix}conv1.weight"
    layers = layers or [f"{prefix}layer{s}" for s in (1, 2, 3, 4)]
    stem = state.get(stem_key)
    if stem is None:
        raise UsageError(f"{where}: 1 missing: {stem_key} (no reference ResNet stem)")
    bottleneck = f"{layers[0]}.0.conv3.weight" in state
    blocks = tuple(
        len({k[len(layer) + 1 :].split(".")[0] for k in state if k.startswith(f"{layer}.")}) for layer in layers
    )
    for name, spec in BACKBONES.items():
        if spec.stem == stem.shape[0] and (spec.block == "bottleneck") == bottleneck and blocks[:3] == spec.blocks[:3]:
            if blocks[3] in (0, spec.blocks[3]):
                return BackboneConfig(name)
    shapes = ", ".join(f"{n} (stem {s.stem}, {s.block} {list(s.blocks)})" for n, s in BACKBONES.items())
    raise UsageError(
        f"{where}: a ResNet with stem {stem.shape[0]}, {'bottleneck' if bottleneck else 'basic'} blocks "
        f"{[b for b in blocks if b]} is none of advss_tf's backbones: {shapes}"
    )


def _strip(state: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


# -- the formats -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Imported:
    """A reference checkpoint as our Keras model(s), its export description, and the writer of its SavedModel.

    `models`: "classifier" (finetune), "model" (the pretext model: rotation / jigsaw / selfie), or "branch1".."branch3"
    (the ensembles).
    """

    format: str
    backbone: BackboneConfig
    models: dict[str, Any]
    info: dict[str, Any]
    write: Callable[[str], None]


def _one_file(paths: list[str], fmt: str) -> str:
    if len(paths) != 1:
        raise UsageError(f"--format={fmt} takes one --checkpoint file, got {len(paths)}")
    return paths[0]


def _provenance(paths: list[str], fmt: str, meta: dict, normaliser: dict) -> dict[str, Any]:
    return {
        "trained_by": REFERENCE,
        "format": fmt,
        "format_description": FORMATS[fmt],
        "sources": [{"file": os.path.basename(p), "sha256": sha256(p)} for p in paths],
        "checkpoint_metadata": meta,
        "normalization": normaliser or {"mean": list(MEAN), "std": list(STD), "note": "hard-coded in the reference"},
        "architecture_version": 2,
    }


def _classifier_from(state: dict[str, np.ndarray], where: str, normaliser: dict) -> ImageClassifier:
    """Normaliser + ResNet state dict (`0.mean`, `0.std`, `1.<ResNet>`) → our classifier with its weights."""
    backbone = infer_backbone(state, "1.", where)
    linear = state.get("1.linear.weight")
    num_classes = int(linear.shape[0]) if linear is not None else cifar10.NUM_CLASSES
    model = ImageClassifier(backbone, num_classes, name="classifier")
    slots = {**normaliser_slots("0.mean", "0.std", (3,), normaliser), **resnet_slots(model, "1.")}
    apply_slots(state, slots, where)
    return model


def _import_finetune(paths, fmt, options) -> Imported:
    path = _one_file(paths, fmt)
    (state,), meta = _state_dicts(load_checkpoint(path), path, fmt, ("state_dict",))
    normaliser: dict = {}
    model = _classifier_from(state, path, normaliser)
    info = {
        "version": 1,
        "backbone": to_dict(model.backbone),
        "num_classes": model.num_classes,
        "pretrained": None,
        "imported": _provenance(paths, fmt, meta, normaliser),
        "versions": versions(),
    }
    return Imported(
        fmt, model.backbone, {"classifier": model}, info, lambda out: validation.export_classifier(out, model, info)
    )


def _pretrain_config(backbone: BackboneConfig, task: str, **overrides) -> PretrainConfig:
    # model_dir is required by the config and unused here: an import has no run directory.
    return PretrainConfig(task=task, model_dir="", backbone=backbone, **overrides)


def _import_classification_pretext(paths, fmt, options) -> Imported:
    path = _one_file(paths, fmt)
    (state,), meta = _state_dicts(load_checkpoint(path), path, fmt, ("state_dict",))
    backbone = infer_backbone(state, "1.", path)
    perms = _read_permutations(options.get("permutations")) if fmt == "jigsaw" else None
    linear = state.get("1.linear.weight")
    classes = int(linear.shape[0]) if linear is not None else None
    if fmt == "rotation":
        cfg = _pretrain_config(backbone, "rotation")
        task = rotation_task(cfg)
    else:
        n_random = (len(perms) - 1) if perms is not None else max((classes or 31) - 1, 1)
        cfg = _pretrain_config(backbone, "jigsaw", jigsaw_permutations=n_random)
        if perms is not None and classes is not None and classes != len(perms):
            raise UsageError(
                f"{path} has a {classes}-way jigsaw head but --permutations holds {len(perms) - 1} permutations "
                f"(+ the identity = {len(perms)} classes)"
            )
        task = jigsaw_task(cfg, perms if perms is not None else np.tile(np.arange(NUM_PATCHES), (n_random + 1, 1)))
    model = task.build_model()
    normaliser: dict = {}
    apply_slots(state, {**normaliser_slots("0.mean", "0.std", (3,), normaliser), **resnet_slots(model, "1.")}, path)
    extra = {"imported": _provenance(paths, fmt, meta, normaliser)}
    if fmt == "jigsaw" and perms is None:
        task = _WithoutPermutations(task)  # no permutation set to export: the head's classes mean nothing known
        extra["jigsaw_head"] = "unusable: the permutation set (the script's permutation.npy) was not given"
    elif fmt == "jigsaw":
        extra["imported"]["permutations"] = _permutation_record(options["permutations"])
    return Imported(
        fmt, backbone, {"model": model}, extra, lambda out: pretraining.write_export(out, task, model, cfg, extra)
    )


def _read_permutations(path: str | None) -> np.ndarray | None:
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


def _import_selfie(paths, fmt, options) -> Imported:
    path = _one_file(paths, fmt)
    (p_state, selfie_state), meta = _state_dicts(load_checkpoint(path), path, fmt, ("P_state", "selfie_state"))
    backbone = infer_backbone(p_state, "1.", f"{path} P_state")
    cfg = _pretrain_config(backbone, "selfie", **_selfie_dims(selfie_state, backbone, path, options))
    task = SelfieTask(cfg)
    model = task.build_model()
    normaliser: dict = {}
    patch_encoder = _PatchEncoderView(model)
    slots = {
        **normaliser_slots("0.mean", "0.std", (3,), normaliser),
        **resnet_slots(patch_encoder, "1.", stages=3, head=False),
    }
    apply_slots(p_state, slots, f"{path} P_state")
    apply_slots(selfie_state, selfie_slots(model), f"{path} selfie_state")
    extra = {"imported": _provenance(paths, fmt, meta, normaliser)}
    return Imported(
        fmt, backbone, {"model": model}, extra, lambda out: pretraining.write_export(out, task, model, cfg, extra)
    )


def _import_ensemble_pretrain(paths, fmt, options) -> Imported:
    path = _one_file(paths, fmt)
    (state, selfie_state), meta = _state_dicts(load_checkpoint(path), path, fmt, ("state_dict", "selfie_state"))
    found = infer_backbone(state, "", path, "blocks.0.weight", ["blocks.1", "blocks.2", "blocks.3", "layer4_rotation"])
    backbone = dataclasses.replace(found, stem_norm=False)  # the reference ensemble's trunk: conv1 into layer1
    fc = state.get("fc_jigsaw.weight")
    perms = _read_permutations(options.get("permutations"))
    classes = int(fc.shape[0]) if fc is not None else 31
    if perms is not None and classes != len(perms):
        raise UsageError(f"{path} has a {classes}-way jigsaw head but --permutations gives {len(perms)} classes")
    cfg = _pretrain_config(
        backbone,
        "ensemble",
        jigsaw_permutations=max(classes - 1, 1),
        **_selfie_dims(selfie_state, backbone, path, options),
    )
    task = EnsembleTask(cfg, perms if perms is not None else np.tile(np.arange(NUM_PATCHES), (classes, 1)))
    model = task.build_model()
    if perms is None:
        task = _WithoutPermutations(task)
    apply_slots(state, ensemble_trunk_slots(model), f"{path} state_dict")
    apply_slots(selfie_state, selfie_slots(model.selfie), f"{path} selfie_state")
    extra = {"imported": _provenance(paths, fmt, {}, {})}
    extra["imported"]["checkpoint_metadata"] = meta
    if perms is None:
        extra["jigsaw_head"] = "unusable: the permutation set (the script's permutation.npy) was not given"
    else:
        extra["imported"]["permutations"] = _permutation_record(options["permutations"])
    return Imported(
        fmt, backbone, {"model": model}, extra, lambda out: pretraining.write_export(out, task, model, cfg, extra)
    )


def _selfie_dims(selfie_state: dict, backbone: BackboneConfig, path: str, options: dict) -> dict[str, Any]:
    """The transformer's size as the file has it (layers, feed-forward width; heads from the flag or width / 64)."""
    layers = len({k.split(".")[2] for k in selfie_state if k.startswith("at_pool.layer_stack.")})
    w1 = selfie_state.get("at_pool.layer_stack.0.pos_ffn.w_1.weight")
    if layers == 0 or w1 is None:
        raise UsageError(f"{path} selfie_state: 1 missing: at_pool.layer_stack.0.pos_ffn.w_1.weight (no encoder layer)")
    return dict(
        selfie_layers=layers,
        selfie_heads=int(options.get("selfie_heads") or max(backbone.trunk_channels // _REFERENCE_D_K, 1)),
        selfie_ff_dim=int(w1.shape[0]),
        selfie_logit_scale=1.0,  # the reference's raw query·patch dot products
    )


def _permutation_record(path: str) -> dict[str, str]:
    return {
        "file": os.path.basename(path),
        "sha256": sha256(path),
        "classes": "class 0 = identity, class k = row k-1 of the file (as the reference's jigsaw())",
    }


class _WithoutPermutations:
    """A jigsaw-carrying task as the export sees it when the permutation set is unknown: no permutation asset."""

    def __init__(self, task):
        self._task = task

    def __getattr__(self, name: str):
        return getattr(self._task, name)

    def export_assets(self) -> dict[str, str]:
        return {}


class _PatchEncoderView:
    """What `resnet_slots` reads of a classifier (backbone, trunk), for a model that has only a trunk."""

    def __init__(self, model):
        self.backbone, self.trunk, self.stage4, self.head = model.backbone, model.trunk, None, None


def _import_ensemble(paths, fmt, options) -> Imported:
    normaliser: dict = {}
    meta: dict = {}
    if fmt == "finetune_ensemble" and len(paths) == 3:
        branches = []
        for path in paths:
            (state,), meta_i = _state_dicts(load_checkpoint(path), path, "finetune", ("state_dict",))
            branches.append(_classifier_from(state, path, normaliser))
            meta[os.path.basename(path)] = meta_i
    elif len(paths) == 1:
        path = paths[0]
        (state,), meta = _state_dicts(load_checkpoint(path), path, fmt, ("state_dict",))
        if fmt == "robustbench":
            # The class registers its branches twice (branchN. and models.N-1.): the copies must be the same tensors.
            for i in (1, 2, 3):
                for key in [k for k in state if k.startswith(f"models.{i - 1}.")]:
                    twin = f"branch{i}." + key[len(f"models.{i - 1}.") :]
                    if twin not in state or not np.array_equal(state[twin], state[key]):
                        raise UsageError(f"{path}: {key} is not the same tensor as {twin}")
            checks = normaliser_slots("mu", "sigma", (1, 3, 1, 1), normaliser)
        else:
            checks = normaliser_slots("normalize.mean", "normalize.std", (3,), normaliser)
        branches = []
        for i in (1, 2, 3):
            sub = _strip(state, f"branch{i}.")
            backbone = infer_backbone(sub, "", f"{path} branch{i}")
            linear = sub.get("linear.weight")
            model = ImageClassifier(
                backbone, int(linear.shape[0]) if linear is not None else 10, name=f"classifier_branch{i}"
            )
            apply_slots(sub, resnet_slots(model), f"{path} branch{i}")
            branches.append(model)
        rest = {k: v for k, v in state.items() if not k.startswith(("branch1.", "branch2.", "branch3.", "models."))}
        apply_slots(rest, checks, path)
    else:
        raise UsageError(f"--format={fmt} takes one file{' or three' if fmt == 'finetune_ensemble' else ''}")
    if len({m.backbone for m in branches}) != 1 or len({m.num_classes for m in branches}) != 1:
        raise UsageError("the three branches differ in backbone or classes")
    info = {
        "version": 1,
        "ensemble": [{"branch": f"branch{i + 1}", "format": "imported"} for i in range(3)],
        "combination": "probabilities = mean of the members' softmax; logits = log(probabilities)",
        "num_classes": branches[0].num_classes,
        "backbone": to_dict(branches[0].backbone),
        "pretrained": None,
        "imported": _provenance(paths, fmt, meta, normaliser),
        "versions": versions(),
    }

    def logits(images):
        return serving.log_mean_softmax([m(images, training=False) for m in branches])

    parts = {f"branch{i + 1}": {"trunk": m.trunk, "stage4": m.stage4, "head": m.head} for i, m in enumerate(branches)}
    models = {f"branch{i + 1}": m for i, m in enumerate(branches)}
    return Imported(
        fmt, branches[0].backbone, models, info, lambda out: serving.save_classifier(out, logits, parts, info)
    )


_IMPORTERS = {
    "finetune": _import_finetune,
    "rotation": _import_classification_pretext,
    "jigsaw": _import_classification_pretext,
    "selfie": _import_selfie,
    "ensemble_pretrain": _import_ensemble_pretrain,
    "finetune_ensemble": _import_ensemble,
    "robustbench": _import_ensemble,
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
      permutations: jigsaw only: the training script's permutation.npy.
      selfie_heads: selfie only: attention heads (default: trunk width / 64, as the reference's get_selfie_model).

    Raises:
      UsageError: anything wrong with the inputs.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; valid: {', '.join(FORMATS)}")
    paths = [checkpoints] if isinstance(checkpoints, str) else list(checkpoints)
    if permutations is not None and fmt not in ("jigsaw", "ensemble_pretrain"):
        raise UsageError(f"--permutations is for --format=jigsaw or ensemble_pretrain, not {fmt}")
    if selfie_heads is not None and fmt not in ("selfie", "ensemble_pretrain"):
        raise UsageError(f"--selfie_heads is for --format=selfie, not {fmt}")
    return _IMPORTERS[fmt](paths, fmt, {"permutations": permutations, "selfie_heads": selfie_heads})


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
