"""The reference's fine-tuned classifier (finetune/main.py, main_trades.py, main_trades2.py: `{'state_dict':
normaliser + ResNet}`) → our classifier export."""

from __future__ import annotations

from typing import Any

import numpy as np

from advss_tf.config import to_dict, versions
from advss_tf.data import cifar10
from advss_tf.importers.backbone import infer_backbone, resnet_slots
from advss_tf.importers.base import Format, Imported, provenance
from advss_tf.importers.checkpoint import one_file, read_state_dicts
from advss_tf.importers.slots import apply_slots, normaliser_slots
from advss_tf.models.classifier import ImageClassifier
from advss_tf.training import validation


def classifier_from(state: dict[str, np.ndarray], where: str, normaliser: dict) -> ImageClassifier:
    """Normaliser + ResNet state dict (`0.mean`, `0.std`, `1.<ResNet>`) → our classifier with its weights."""
    backbone = infer_backbone(state, "1.", where)
    linear = state.get("1.linear.weight")
    num_classes = int(linear.shape[0]) if linear is not None else cifar10.NUM_CLASSES
    model = ImageClassifier(backbone, num_classes, name="classifier")
    slots = {**normaliser_slots("0.mean", "0.std", (3,), normaliser), **resnet_slots(model, "1.")}
    apply_slots(state, slots, where)
    return model


def import_finetune(paths: list[str], fmt: Format, options: dict[str, Any]) -> Imported:
    """One finetune checkpoint → the classifier export `evaluate` attacks."""
    path = one_file(paths, fmt.name)
    (state,), meta = read_state_dicts(path, fmt.name, ("state_dict",))
    normaliser: dict = {}
    model = classifier_from(state, path, normaliser)
    info = {
        "version": 1,
        "backbone": to_dict(model.backbone),
        "num_classes": model.num_classes,
        "pretrained": None,
        "imported": provenance(paths, fmt, meta, normaliser),
        "versions": versions(),
    }
    return Imported(
        fmt.name,
        model.backbone,
        {"classifier": model},
        info,
        lambda out: validation.export_classifier(out, model, info),
    )
