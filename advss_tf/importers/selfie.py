"""The reference's Selfie pretraining (pretraining/train_{adv,std}_selfie.py: `{'P_state', 'selfie_state'}`) → our
pretraining export; the slots and size of its transformer (`attention_pooling.SelfieModel`), which the ensemble
pretraining also carries."""

from __future__ import annotations

from typing import Any

from advss_tf.errors import UsageError
from advss_tf.importers.backbone import infer_backbone, resnet_slots
from advss_tf.importers.base import Format, Imported, pretrain_config, provenance
from advss_tf.importers.checkpoint import one_file, read_state_dicts
from advss_tf.importers.slots import Slot, apply_slots, assign, normaliser_slots
from advss_tf.models.backbones import BackboneConfig
from advss_tf.models.selfie import SelfieModel
from advss_tf.patches import GRID
from advss_tf.tasks.selfie import SelfieTask
from advss_tf.training import pretraining

_REFERENCE_D_K = 64  # get_selfie_model: d_in = 64, n_heads = d_model // 64


def import_selfie(paths: list[str], fmt: Format, options: dict[str, Any]) -> Imported:
    """A Selfie checkpoint (patch encoder P + transformer; heads from `options["selfie_heads"]`) → a pretraining
    export."""
    path = one_file(paths, fmt.name)
    (p_state, selfie_state), meta = read_state_dicts(path, fmt.name, ("P_state", "selfie_state"))
    backbone = infer_backbone(p_state, "1.", f"{path} P_state")
    cfg = pretrain_config(backbone, "selfie", **selfie_dims(selfie_state, backbone, path, options))
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
    extra = {"imported": provenance(paths, fmt, meta, normaliser)}
    return Imported(
        fmt.name, backbone, {"model": model}, extra, lambda out: pretraining.write_export(out, task, model, cfg, extra)
    )


def selfie_slots(model: SelfieModel, prefix: str = "") -> dict[str, Slot]:
    """`attention_pooling.SelfieModel`'s state_dict keys → our SelfieHead's variables."""
    head = model.selfie_head
    d = head.model_dim
    slots = {
        f"{prefix}u0": Slot((1, 1, d), lambda v: assign(head.u0, v)),
        f"{prefix}row_embeddings": Slot((GRID, d), lambda v: assign(head.row_embeddings, v)),
        f"{prefix}column_embeddings": Slot((GRID, d), lambda v: assign(head.column_embeddings, v)),
    }
    for i, layer in enumerate(head.encoder_layers):
        p = f"{prefix}at_pool.layer_stack.{i}"
        mha = layer.attention
        h, dk = mha.num_heads, mha.key_dim
        # PyTorch's w_qs output index is head * d_k + j (view(b, l, n_head, d_k)): Keras' kernel is [d, heads, d_k].
        for theirs, dense in (("w_qs", mha._query_dense), ("w_ks", mha._key_dense), ("w_vs", mha._value_dense)):
            slots[f"{p}.slf_attn.{theirs}.weight"] = Slot((h * dk, d), lambda v, k=dense.kernel: assign(k, v.T))
            slots[f"{p}.slf_attn.{theirs}.bias"] = Slot((h * dk,), lambda v, b=dense.bias: assign(b, v))
        out = mha._output_dense
        slots[f"{p}.slf_attn.fc.weight"] = Slot((d, h * dk), lambda v, k=out.kernel: assign(k, v.T))
        slots[f"{p}.slf_attn.fc.bias"] = Slot((d,), lambda v, b=out.bias: assign(b, v))
        for theirs, norm in (("slf_attn.layer_norm", layer.attention_norm), ("pos_ffn.layer_norm", layer.ff_norm)):
            slots[f"{p}.{theirs}.weight"] = Slot((d,), lambda v, g=norm.gamma: assign(g, v))
            slots[f"{p}.{theirs}.bias"] = Slot((d,), lambda v, b=norm.beta: assign(b, v))
        ff = layer.ff_dim
        slots[f"{p}.pos_ffn.w_1.weight"] = Slot((ff, d, 1), lambda v, k=layer.ff_in.kernel: assign(k, v[:, :, 0].T))
        slots[f"{p}.pos_ffn.w_1.bias"] = Slot((ff,), lambda v, b=layer.ff_in.bias: assign(b, v))
        slots[f"{p}.pos_ffn.w_2.weight"] = Slot((d, ff, 1), lambda v, k=layer.ff_out.kernel: assign(k, v[:, :, 0].T))
        slots[f"{p}.pos_ffn.w_2.bias"] = Slot((d,), lambda v, b=layer.ff_out.bias: assign(b, v))
    return slots


def selfie_dims(selfie_state: dict, backbone: BackboneConfig, path: str, options: dict) -> dict[str, Any]:
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


class _PatchEncoderView:
    """What `resnet_slots` reads of a classifier (backbone, trunk), for a model that has only a trunk."""

    def __init__(self, model):
        self.backbone, self.trunk, self.stage4, self.head = model.backbone, model.trunk, None, None
